"""One ``redis.asyncio`` client behind a hard timeout and a circuit breaker.

Redis is optional and never on the failure path: every call has a hard timeout
(``FUSIONREC_REDIS_TIMEOUT_S``), no retries, and goes through a circuit breaker that stops
calling Redis for ``FUSIONREC_BREAKER_RESET_S`` after ``FUSIONREC_BREAKER_FAILURES``
consecutive errors. ``RedisGateway.run`` never raises: it answers ``(False, None)`` when
Redis is unavailable and the caller degrades.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("app.redis")
T = TypeVar("T")


class CircuitBreaker:
    """closed → (``failures`` consecutive errors) → open → (``reset_s``) → half-open probe."""

    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._errors = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self._opened_at is None:
            return "closed"
        if self._probing or self.clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self.clock() - self._opened_at < self.reset_s:
            return False
        self._probing = True  # exactly one probe at a time while half-open
        return True

    def success(self) -> None:
        self._errors = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._errors += 1
        self._probing = False
        if self._opened_at is not None or self._errors >= self.failures:
            self._opened_at = self.clock()


class RedisGateway:
    """One ``redis.asyncio`` client behind a hard timeout and a circuit breaker."""

    def __init__(self, url: str, *, timeout_s: float, breaker: CircuitBreaker) -> None:
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=256,
        )
        self.errors = 0

    async def run(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> tuple[bool, T | None]:
        """(True, result) or (False, None) when Redis is unavailable; never raises."""
        if not self.breaker.allow():
            return False, None
        try:
            result = await asyncio.wait_for(
                op(self.client), timeout=timeout_s or self.timeout_s * 2
            )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            if self.breaker.state == "closed":
                log.warning("redis unavailable (%s); serving without it", type(exc).__name__)
            self.breaker.failure()
            return False, None
        self.breaker.success()
        return True, result

    async def set_add(self, key: str, member: str) -> bool:
        """``SADD``; False when Redis is unavailable (``model_store.privacy`` SharedSets)."""
        ok, _ = await self.run(lambda r: r.sadd(key, member))
        return ok

    async def set_contains(self, key: str, member: str) -> bool | None:
        """``SISMEMBER``; None when Redis is unavailable."""
        ok, found = await self.run(lambda r: r.sismember(key, member))
        return bool(found) if ok else None

    async def ping(self) -> bool:
        ok, _ = await self.run(lambda r: r.ping())
        return ok

    async def close(self) -> None:
        await self.client.aclose()
