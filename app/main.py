"""The app factory: ``create_app(settings)``; the lifespan loads the bundle into a Recommender.

Nothing happens at import time. ``uvicorn --factory app.main:app_from_env`` builds the
settings from the environment (what ``fusionrec serve`` does, also with several workers).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import torch
from fastapi import FastAPI
from pydantic import ValidationError

from app import errors
from app.deps import RateLimiter
from app.event_log import EventLogWriter
from app.follow import CurrentFollower, notify_current, pubsub_client
from app.history import HistoryStore, LocalHistory, RedisHistory
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, MetricsMiddleware, install_log_redaction
from app.recommender import Recommender
from app.redis_gateway import CircuitBreaker, RedisGateway
from app.routes import admin, demo, health, items, recommend, users
from app.settings import Settings, settings_error_message
from app.tombstones import FileTombstones, RedisTombstones, Tombstones
from app.vector_cache import LocalLRU, VectorCache
from indexer.build import set_faiss_threads
from model_store.errors import ConfigError
from model_store.events.log import EventStore
from model_store.privacy import users as private

log = logging.getLogger("app")


class State(TypedDict):
    settings: Settings
    recommender: Recommender
    metrics: Metrics
    limiter: RateLimiter
    auth_failures: RateLimiter


def build_recommender(
    settings: Settings, metrics: Metrics
) -> tuple[Recommender, RedisGateway | None]:
    """The service core for ``settings``: Redis (when configured) behind its breaker, the
    vector cache and history store over it, and the recommender using them."""
    gateway: RedisGateway | None = None
    local_history = LocalHistory(
        settings.history_max_len,
        ttl_s=settings.history_ttl_s,
        max_bytes=settings.history_max_bytes,
    )
    history: HistoryStore = local_history
    tombstones: Tombstones
    if settings.redis_url:
        gateway = RedisGateway(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
        )
        history = RedisHistory(
            gateway,
            local_history,
            settings.history_max_len,
            ttl_s=settings.history_ttl_s,
            max_pending=settings.history_max_pending_users,
            retry_after_s=settings.breaker_reset_s,
        )
        tombstones = RedisTombstones(gateway)
    else:
        tombstones = FileTombstones(settings.store)
    secret = settings.user_key_secret
    user_key = private.user_key(settings.store, secret.get_secret_value() if secret else None)
    cache = VectorCache(
        LocalLRU(settings.cache_size, settings.cache_ttl_s, settings.cache_max_bytes),
        gateway,
        settings.cache_ttl_s,
    )
    event_log = None
    url = settings.events_log_url()
    if url is not None:
        event_log = EventLogWriter(
            EventStore(url),
            settings.store / "events-spool",
            max_pending=settings.events_max_pending,
            spool_max_bytes=settings.events_spool_max_bytes,
        )
    rec = Recommender(
        store=settings.store,
        cache=cache,
        history=history,
        metrics=metrics,
        device=settings.device,
        candidates=settings.candidates,
        batch_max_size=settings.batch_max_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        search_user_weight=settings.search_user_weight,
        event_log=event_log,
        event_types=settings.event_types,
        tombstones=tombstones,
        user_key=user_key,
        search_mode=settings.search_mode,
        search_min_similarity=settings.search_min_similarity,
    )
    return rec, gateway


def create_app(settings: Settings) -> FastAPI:
    """Build the service for ``settings``; the bundle is loaded when the lifespan starts."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        threads_before = torch.get_num_threads()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        set_faiss_threads(settings.faiss_threads)
        rec, gateway = build_recommender(settings, metrics)
        await asyncio.to_thread(rec.start)
        if gateway is not None and not await gateway.ping():
            log.warning("Redis at the configured URL is not answering; serving without it")
        follower = None
        if settings.follow_poll_s > 0:
            follower = CurrentFollower(
                rec,
                settings.store,
                poll_s=settings.follow_poll_s,
                redis=pubsub_client(settings.redis_url),
            )
            rec.on_publish = functools.partial(notify_current, follower.redis)
            follower.start()
        try:
            yield State(
                settings=settings,
                recommender=rec,
                metrics=metrics,
                limiter=RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst),
                auth_failures=RateLimiter(settings.auth_fail_rps, settings.auth_fail_burst),
            )
        finally:
            if follower is not None:
                await follower.stop()
                if follower.redis is not None:
                    await follower.redis.aclose()
            if isinstance(rec.history, RedisHistory):
                await rec.history.drain(settings.history_drain_s)
            if rec.event_log is not None:
                await rec.event_log.drain(settings.history_drain_s)
                await asyncio.to_thread(rec.event_log.close)
            await asyncio.to_thread(rec.stop)
            torch.set_num_threads(threads_before)
            if gateway is not None:
                await gateway.close()

    app = FastAPI(
        title="fusionrec",
        version="0.1.0",
        lifespan=lifespan,
        description="Search and recommendations from a fused LM + sequential model.",
        responses={422: {"model": None}},
    )
    errors.install(app)
    for module in (recommend, items, users, admin, health):
        app.include_router(module.router)
    if settings.demo:
        demo.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_log_redaction()
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment (an invalid one is
    refused with a message that names it and never echoes a secret)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError("invalid settings:\n" + settings_error_message(exc)) from None
    return create_app(settings)
