"""The app factory: ``create_app(settings)``; the lifespan loads the bundle into a Recommender.

Nothing happens at import time. ``uvicorn --factory app.main:app_from_env`` builds the
settings from the environment (what ``fusionrec serve`` does, also with several workers).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors
from app.cache import (
    CircuitBreaker,
    LocalHistory,
    LocalLRU,
    RedisGateway,
    RedisHistory,
    VectorCache,
)
from app.deps import RateLimiter
from app.metrics import Metrics, MetricsMiddleware
from app.recommender import Recommender
from app.routes import admin, health, items, recommend, users
from app.settings import Settings
from indexer.build import set_faiss_threads

log = logging.getLogger("app")
_USER_PATH = re.compile(r"(/v1/users/)[^/?\s]+")


class State(TypedDict):
    settings: Settings
    recommender: Recommender
    metrics: Metrics
    limiter: RateLimiter


class RedactUserIds(logging.Filter):
    """Access logs show /v1/users/<redacted>: user ids are never logged in clear."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _USER_PATH.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def install_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactUserIds) for f in access.filters):
        access.addFilter(RedactUserIds())


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: by Content-Length, or, for a body without one
    (chunked), by counting the streamed bytes before the app sees any."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, size: str) -> JSONResponse:
        return JSONResponse(
            errors.error_body(
                "payload_too_large",
                f"request body is {size} bytes; the limit is {self.limit} "
                f"bytes (FUSIONREC_MAX_BODY_BYTES)",
            ),
            status_code=413,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await JSONResponse(
                    errors.error_body("bad_request", "Content-Length is not a number"),
                    status_code=400,
                )(scope, receive, send)
                return
            if int(declared) > self.limit:
                await self._too_large(declared.decode())(scope, receive, send)
                return
            # the HTTP server delivers no more body than Content-Length declares (the rest
            # would be the next request), so a declared size within the limit needs no
            # counting: pass the body through unbuffered
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []  # chunked transfer: count the bytes as they arrive
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(f"more than {self.limit}")(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(settings: Settings) -> FastAPI:
    """Build the service for ``settings``; the bundle is loaded when the lifespan starts."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        threads_before = torch.get_num_threads()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        set_faiss_threads(settings.faiss_threads)
        gateway: RedisGateway | None = None
        local_history = LocalHistory(settings.history_max_len)
        history: LocalHistory | RedisHistory = local_history
        if settings.redis_url:
            gateway = RedisGateway(
                settings.redis_url,
                timeout_s=settings.redis_timeout_s,
                breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            )
            history = RedisHistory(gateway, local_history, settings.history_max_len)
        cache = VectorCache(
            LocalLRU(settings.cache_size, settings.cache_ttl_s), gateway, settings.cache_ttl_s
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
        )
        await asyncio.to_thread(rec.start)
        if gateway is not None and not await gateway.ping():
            log.warning("Redis at the configured URL is not answering; serving without it")
        try:
            yield State(
                settings=settings,
                recommender=rec,
                metrics=metrics,
                limiter=RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst),
            )
        finally:
            if isinstance(history, RedisHistory):
                await history.drain(settings.history_drain_s)
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
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_log_redaction()
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment."""
    return create_app(Settings())  # type: ignore[call-arg]
