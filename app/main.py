"""The app factory: ``create_app(settings)``; the lifespan builds the core and loads the bundle.

Nothing happens at import time. ``uvicorn --factory app.main:app_from_env`` builds the
settings from the environment (what ``fusionrec serve`` does, also with several workers).
:func:`build_core` composes the parts of ``app.core`` over the stores the settings name —
Redis (when configured) behind its breaker, the vector cache and histories over it, the
event log, the privacy room — and each part is handed the settings group it uses.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypedDict

import torch
from fastapi import FastAPI
from pydantic import ValidationError

from app import errors, openapi
from app.core.catalog import Catalog
from app.core.event_limit import UserEventLimit
from app.core.follow import start_following
from app.core.lookup import Lookup
from app.core.reading import Reading
from app.core.shoppers import Shoppers, erasable_stores
from app.core.snapshot import SnapshotHolder
from app.deps import RateLimiter
from app.event_log import EventLogWriter
from app.history import HistoryStore, LocalHistory, RedisHistory
from app.metrics import Metrics
from app.middleware import (
    AccessLog,
    BodyLimitMiddleware,
    MetricsMiddleware,
    SecurityHeadersMiddleware,
    install_log_redaction,
    silence_uvicorn_access,
)
from app.redis_gateway import CircuitBreaker, RedisGateway
from app.routes import admin, demo, health, items, recommend, users
from app.settings import HistorySettings, RedisSettings, Settings, settings_error_message
from app.vector_cache import LocalLRU, VectorCache
from indexer.build import set_faiss_threads
from model_store.catalog.table import CatalogStore
from model_store.catalog.writes import default_url
from model_store.data.attributes import AttrType
from model_store.events.log import EventStore
from model_store.privacy import FileTombstones, Privacy, RedisTombstones, Tombstones, user_key

log = logging.getLogger("app")


class State(TypedDict):
    settings: Settings
    metrics: Metrics
    limiter: RateLimiter
    auth_failures: RateLimiter
    redis: RedisGateway | None
    snapshots: SnapshotHolder
    reading: Reading
    catalog: Catalog
    shoppers: Shoppers


@dataclass
class Core:
    """The parts of one app and the stores under them, started and stopped together."""

    snapshots: SnapshotHolder
    reading: Reading
    catalog: Catalog
    shoppers: Shoppers
    redis: RedisGateway | None
    history: HistoryStore
    event_log: EventLogWriter | None

    async def start(self) -> None:
        """Start the model workers and load CURRENT (a failure is kept for /readyz)."""
        self.reading.start()
        await asyncio.to_thread(self.snapshots.start)
        self.catalog.follower.start()
        if self.redis is not None and not await self.redis.ping():
            log.warning("Redis at the configured URL is not answering; serving without it")

    async def stop(self, *, drain_s: float) -> None:
        """Write back what waits for Redis or the log (up to ``drain_s``), then close."""
        await self.catalog.follower.stop()
        if isinstance(self.history, RedisHistory):
            await self.history.drain(drain_s)
        if self.event_log is not None:
            await self.event_log.drain(drain_s)
            await asyncio.to_thread(self.event_log.close)
        await asyncio.to_thread(self.reading.stop)
        if self.redis is not None:
            await self.redis.close()


def _stores(
    redis: RedisSettings, history: HistorySettings
) -> tuple[RedisGateway | None, HistoryStore]:
    """Redis behind its breaker (when configured) and the history store over it."""
    local = LocalHistory(
        history.max_len,
        ttl_s=history.ttl_s,
        max_bytes=history.max_bytes,
        max_user_bytes=history.max_user_bytes,
    )
    if not redis.url:
        return None, local
    breaker = CircuitBreaker(redis.breaker_failures, redis.breaker_reset_s)
    gateway = RedisGateway(redis.url, timeout_s=redis.timeout_s, breaker=breaker)
    shared = RedisHistory(
        gateway,
        local,
        history.max_len,
        ttl_s=history.ttl_s,
        max_pending=history.max_pending_users,
        retry_after_s=redis.breaker_reset_s,
    )
    return gateway, shared


def _event_log(settings: Settings) -> EventLogWriter | None:
    url = settings.events.log_url(settings.store)
    if url is None:
        return None
    return EventLogWriter(
        EventStore(url),
        settings.store / "events-spool",
        max_pending=settings.events.max_pending,
        spool_max_bytes=settings.events.spool_max_bytes,
    )


def _catalog_store(settings: Settings) -> CatalogStore:
    """The catalog table, in the event log's database (the store's SQLite when the log is
    off): ``model_store.catalog.table``."""
    url = settings.events.log_url(settings.store) or default_url(settings.store)
    return CatalogStore(url)


def _privacy_key(settings: Settings) -> bytes:
    """The HMAC key of user ids: the configured secret, else the store's key file."""
    secret = settings.security.user_key_secret
    return user_key(settings.store, secret.get_secret_value() if secret else None)


def build_core(settings: Settings, metrics: Metrics) -> Core:
    """The service core for ``settings``, nothing started yet."""
    gateway, history = _stores(settings.redis, settings.history)
    c = settings.cache
    cache = VectorCache(LocalLRU(c.size, c.ttl_s, c.max_bytes), gateway, c.ttl_s)
    event_log = _event_log(settings)
    tombstones: Tombstones = (
        RedisTombstones(gateway) if gateway is not None else FileTombstones(settings.store)
    )
    privacy = Privacy(
        key=_privacy_key(settings),
        tombstones=tombstones,
        stores=erasable_stores(cache=cache, history=history, event_log=event_log),
    )
    snapshots = SnapshotHolder(
        store=settings.store,
        device=settings.runtime.device,
        metrics=metrics,
        rerank=settings.runtime.rerank,
    )
    lookup = Lookup(history=history, cache=cache, privacy=privacy, metrics=metrics)
    reading = Reading(
        snapshots=snapshots,
        lookup=lookup,
        metrics=metrics,
        runtime=settings.runtime,
        batching=settings.batching,
        search=settings.search,
    )
    shoppers = Shoppers(
        snapshots=snapshots,
        lookup=lookup,
        privacy=privacy,
        event_log=event_log,
        event_types=settings.events.types,
        user_limit=UserEventLimit(settings.security.user_events_per_minute),
    )
    catalog = Catalog(
        snapshots=snapshots, store=_catalog_store(settings), redis_url=settings.redis.url
    )
    return Core(snapshots, reading, catalog, shoppers, gateway, history, event_log)


def create_app(settings: Settings) -> FastAPI:
    """Build the service for ``settings``; the bundle is loaded when the lifespan starts."""
    metrics = Metrics()
    security = settings.security
    served: list[SnapshotHolder] = []  # the running core's snapshots (for /openapi.json)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        threads_before = torch.get_num_threads()
        if settings.runtime.torch_threads:
            torch.set_num_threads(settings.runtime.torch_threads)
        set_faiss_threads(settings.runtime.faiss_threads)
        core = build_core(settings, metrics)
        served.append(core.snapshots)
        await core.start()
        follower = start_following(core.snapshots, settings.follow, settings.redis.url)
        try:
            yield State(
                settings=settings,
                metrics=metrics,
                limiter=RateLimiter(security.rate_limit_rps, security.rate_limit_burst),
                auth_failures=RateLimiter(security.auth_fail_rps, security.auth_fail_burst),
                redis=core.redis,
                snapshots=core.snapshots,
                reading=core.reading,
                catalog=core.catalog,
                shoppers=core.shoppers,
            )
        finally:
            if follower is not None:
                await follower.stop()
            await core.stop(drain_s=settings.history.drain_s)
            served.clear()
            torch.set_num_threads(threads_before)

    app = FastAPI(
        title="fusionrec",
        version="0.1.0",
        lifespan=lifespan,
        description="Search and recommendations from a fused LM + sequential model.",
    )
    errors.install(app)
    openapi.install(app, lambda: _catalog_types(served), list(settings.events.types))
    for module in (recommend, items, users, admin, health):
        app.include_router(module.router)
    if settings.demo:
        demo.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.http.max_body_bytes)
    http = settings.http
    access = AccessLog(http.access_log_sample) if http.access_log == "json" else None
    app.add_middleware(MetricsMiddleware, metrics=metrics, access=access)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: on every answer
    install_log_redaction()
    silence_uvicorn_access()
    return app


def _catalog_types(
    served: list[SnapshotHolder],
) -> tuple[dict[str, AttrType], list[str]] | None:
    """The served catalog's attribute types and text columns, or None before a bundle."""
    snap = served[0].snapshot if served else None
    if snap is None:
        return None
    return dict(snap.attrs.types), list(snap.bundle.text_columns)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment (an invalid one is
    refused with a message that names it and never echoes a secret)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        # one line per bad setting on stderr and exit 2, as `fusionrec serve` does: under
        # uvicorn a raised error would print a traceback (and pydantic's text every input)
        for line in settings_error_message(exc).splitlines():
            sys.stderr.write(f"error: {line}\n")
        raise SystemExit(2) from None
    return create_app(settings)
