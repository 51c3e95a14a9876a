"""Dependencies: the core's parts and the settings from lifespan state, client and admin
guards. Each part of ``app.core`` is its own dependency, so a route asks for what it uses."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, Request

from app.core.catalog import Catalog
from app.core.reading import Reading
from app.core.shoppers import Shoppers
from app.core.snapshot import SnapshotHolder
from app.errors import ApiError
from app.metrics import Metrics
from app.settings import Settings

MAX_CLIENTS = 100_000


class RateLimiter:
    """Per-client token buckets: ``rate`` tokens/s refill, ``burst`` capacity; 0 rate = off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float | None:
        """None when allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate

    def exhausted(self, client: str) -> float | None:
        """The seconds until ``client`` has a token again, or None when it has one (takes
        nothing)."""
        if self.rate <= 0 or client not in self._buckets:
            return None
        tokens, last = self._buckets[client]
        tokens = min(self.burst, tokens + (time.monotonic() - last) * self.rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate


async def get_snapshots(request: Request) -> SnapshotHolder:
    snapshots: SnapshotHolder = request.state.snapshots
    return snapshots


async def get_reading(request: Request) -> Reading:
    reading: Reading = request.state.reading
    return reading


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.state.catalog
    return catalog


async def get_shoppers(request: Request) -> Shoppers:
    shoppers: Shoppers = request.state.shoppers
    return shoppers


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


SnapshotsDep = Annotated[SnapshotHolder, Depends(get_snapshots)]
ReadingDep = Annotated[Reading, Depends(get_reading)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
ShoppersDep = Annotated[Shoppers, Depends(get_shoppers)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _client_id(request: Request, api_key: str | None) -> str:
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return "ip:" + (request.client.host if request.client else "unknown")


def _too_many(request: Request, code: str, message: str, wait: float) -> ApiError:
    """A 429 (counted in the metrics) with the Retry-After of ``wait`` seconds."""
    metrics: Metrics = request.state.metrics
    metrics.rate_limited.inc()
    return ApiError(429, code, message, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _rate_limit(request: Request, client: str) -> None:
    limiter: RateLimiter = request.state.limiter
    wait = limiter.take(client)
    if wait is not None:
        raise _too_many(
            request,
            "rate_limited",
            f"rate limit exceeded: {limiter.rate:g} requests/s with bursts of "
            f"{limiter.burst:g} per client (FUSIONREC_RATE_LIMIT_RPS/_BURST); "
            f"retry after {wait:.2f} s",
            wait,
        )


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _check_failures(request: Request, realm: str) -> None:
    """429 while this client has used up its failed credential attempts: the credential is
    then not even compared (FUSIONREC_AUTH_FAIL_RPS / _BURST)."""
    failures: RateLimiter = request.state.auth_failures
    wait = failures.exhausted(f"{realm}:{_ip(request)}")
    if wait is not None:
        raise _too_many(
            request,
            "too_many_failed_attempts",
            f"too many failed {realm} credential attempts from this client "
            f"(FUSIONREC_AUTH_FAIL_RPS/_BURST); retry after {wait:.0f} s",
            wait,
        )


def _record_failure(request: Request, realm: str) -> None:
    failures: RateLimiter = request.state.auth_failures
    failures.take(f"{realm}:{_ip(request)}")


async def client_guard(request: Request) -> None:
    """API key (when FUSIONREC_API_KEYS is set) and the per-client rate limit.

    On every request of the hot path, so it reads the settings from the lifespan state
    itself rather than through a nested dependency (each one costs FastAPI ~20 µs).
    """
    settings: Settings = request.state.settings
    api_keys = settings.security.api_keys
    key = request.headers.get("x-api-key")
    if api_keys:
        if not key:
            raise ApiError(
                401,
                "missing_api_key",
                "this server requires an X-API-Key header (FUSIONREC_API_KEYS)",
            )
        _check_failures(request, "api-key")
        if not any(
            hmac.compare_digest(key.encode(), k.get_secret_value().encode()) for k in api_keys
        ):
            _record_failure(request, "api-key")
            raise ApiError(401, "invalid_api_key", "the X-API-Key header is not a valid key")
    _rate_limit(request, _client_id(request, key if api_keys else None))


async def write_guard(request: Request) -> None:
    """Writes naming a user (events, erasure) need an API key unless the operator opted out:
    with FUSIONREC_API_KEYS unset they are refused (403) unless
    FUSIONREC_ALLOW_ANONYMOUS_WRITES=true. Runs after ``client_guard``, which checks a key."""
    settings: Settings = request.state.settings
    security = settings.security
    if not security.api_keys and not security.allow_anonymous_writes:
        raise ApiError(
            403,
            "api_key_required",
            "writes that name a user need an API key: set FUSIONREC_API_KEYS on the server "
            "and send X-API-Key (or opt out with FUSIONREC_ALLOW_ANONYMOUS_WRITES=true)",
        )


async def admin_guard(request: Request, settings: SettingsDep) -> None:
    """``Authorization: Bearer <FUSIONREC_ADMIN_TOKEN>``; admin is off when no token is set."""
    token = settings.security.admin_token
    if token is None:
        raise ApiError(
            403,
            "admin_disabled",
            "admin endpoints are disabled on this server: set "
            "FUSIONREC_ADMIN_TOKEN (16+ characters) to enable them",
        )
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="fusionrec-admin"'}
    if not header:
        raise ApiError(
            401,
            "missing_token",
            "admin endpoint: send 'Authorization: Bearer <FUSIONREC_ADMIN_TOKEN>'",
            headers=challenge,
        )
    _check_failures(request, "admin")
    scheme, _, credential = header.partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), expected):
        _record_failure(request, "admin")
        raise ApiError(
            401,
            "invalid_token",
            "admin endpoint: the bearer token is not FUSIONREC_ADMIN_TOKEN",
            headers=challenge,
        )
    _rate_limit(request, "admin")


ClientGuard = Depends(client_guard)
WriteGuard = Depends(write_guard)
AdminGuard = Depends(admin_guard)
