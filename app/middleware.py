"""ASGI middleware and log filters of the service edge: body-size limit, request metrics
with the optional access log, security headers, user ids redacted from uvicorn's access log."""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.metrics import Metrics

_USER_PATH = re.compile(r"(/v1/users/)[^/?\s]+")


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


# every answer: no MIME sniffing (JSON too), never framed, no Referer to other sites
BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
# the demo page: its own script and style files only (no inline script or style), calls to
# its own origin; the icon is a data: URL
DEMO_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# other HTML (FastAPI's /docs and /redoc load their UI from a CDN with an inline script):
# no framing, no plugins, no <base> hijack
OTHER_HTML_CSP = "frame-ancestors 'none'; object-src 'none'; base-uri 'none'"


class SecurityHeadersMiddleware:
    """The security headers of every answer (``BASE_HEADERS``) and a Content-Security-Policy
    on every HTML one: strict on /demo (``DEMO_CSP``), anti-framing elsewhere."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        demo = str(scope.get("path", "")).startswith("/demo")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers.extend(BASE_HEADERS)
                kind = dict(headers).get(b"content-type", b"")
                if demo or kind.startswith(b"text/html"):
                    csp = DEMO_CSP if demo else OTHER_HTML_CSP
                    headers.append((b"content-security-policy", csp.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


_OURS = {k for k, _ in BASE_HEADERS} | {b"content-security-policy"}


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: by Content-Length, or, for a body without one
    (chunked), by counting the streamed bytes before the app sees any."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, size: str) -> JSONResponse:
        return JSONResponse(
            error_body(
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
                    error_body("bad_request", "Content-Length is not a number"),
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


def silence_uvicorn_access() -> None:
    """No uvicorn access line per request (it cost ~5 % of a cache hit's CPU): its logger
    loses its handlers, which uvicorn checks per connection. ``FUSIONREC_ACCESS_LOG=json``
    logs requests instead (``AccessLog``)."""
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False


class AccessLog:
    """One JSON line per logged request on stdout (logger ``app.access``): time, method,
    route template (never the raw path, so no user or item id), status, milliseconds; a
    ``sample`` fraction of the requests is logged (1 = all)."""

    def __init__(self, sample: float) -> None:
        self.sample = sample
        self.log = logging.getLogger("app.access")
        if not self.log.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.log.addHandler(handler)
            self.log.setLevel(logging.INFO)
            self.log.propagate = False

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        line = {
            "ts": round(time.time(), 3),
            "method": method,
            "route": route,
            "status": status,
            "ms": round(seconds * 1000, 3),
        }
        self.log.info(json.dumps(line, separators=(",", ":")))


class MetricsMiddleware:
    """Counts and times every request by its route template (not the raw path: no ids),
    and writes the access log when one is configured."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access: AccessLog | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(name, method, str(status)).inc()
            elapsed = time.perf_counter() - start
            self.metrics.latency.labels(name, method).observe(elapsed)
            if self.access is not None:
                self.access.record(method, name, status, elapsed)
