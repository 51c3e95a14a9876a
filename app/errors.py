"""The service edge: the one place where errors become HTTP statuses and one JSON shape.

Every error answer is ``{"error": {"code": ..., "message": ...}}``. Core errors
(``model_store.errors``, raised by the service core and the packages below it) map by
type; errors that exist only at the edge (auth, rate limit, body size) are
:class:`ApiError` with their own status.

    FusionrecError
    ├── DataError, ConfigError      400 bad_request
    ├── InvalidInputError           422 invalid_request
    ├── NotFoundError               404 not_found
    ├── PreconditionFailedError     412 precondition_failed (If-Match)
    ├── ReloadRefusedError          409 reload_refused (other ConflictErrors: 409 conflict)
    ├── IndexBuildError             409 index_error
    ├── BundleError (and children)  503 bundle_unavailable
    ├── NotReadyError               503 not_ready, Retry-After
    ├── DependencyError             503 <dependency>_unavailable, Retry-After
    └── ApiError                    its own status (401, 403, 413, 429)
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store.errors import (
    BundleError,
    ConfigError,
    ConflictError,
    DataError,
    DependencyError,
    FusionrecError,
    IndexBuildError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    PreconditionFailedError,
    ReloadRefusedError,
    UnavailableError,
)

log = logging.getLogger("app")


class ApiError(FusionrecError):
    """An error that exists only at the HTTP edge; carries its status and code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


_CORE_STATUS: list[tuple[type[FusionrecError], int, str]] = [
    (NotFoundError, 404, "not_found"),
    (DataError, 400, "bad_request"),
    (ConfigError, 400, "bad_request"),
    (InvalidInputError, 422, "invalid_request"),
    (PreconditionFailedError, 412, "precondition_failed"),
    (ReloadRefusedError, 409, "reload_refused"),
    (ConflictError, 409, "conflict"),
    (IndexBuildError, 409, "index_error"),
    (BundleError, 503, "bundle_unavailable"),
    (NotReadyError, 503, "not_ready"),
    (UnavailableError, 503, "unavailable"),
]


_ABS_PATH = re.compile(r"(?<![\w:/])/(?:[\w.\-+@]+/)+([\w.\-+@]*)")


def hide_paths(text: str, roots: tuple[Path, ...] = ()) -> str:
    """``text`` with each of ``roots`` (the store) written ``STORE`` and every other absolute
    file path cut to its last part (``…/catalog.safetensors``): answers and metrics name the
    version and the file without showing the server's directories."""
    for root in roots:
        forms = {str(root.resolve())} | ({str(root)} if root.is_absolute() else set())
        for form in sorted(forms, key=len, reverse=True):
            if len(form) > 1:
                text = text.replace(form, "STORE")
    return _ABS_PATH.sub(r"…/\1", text)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def status_of(exc: FusionrecError) -> tuple[int, str, dict[str, str]]:
    """(HTTP status, error code, extra headers) of an error."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.headers
    headers: dict[str, str] = {}
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, DependencyError):
        return 503, f"{exc.dependency}_unavailable", headers
    for kind, status, code in _CORE_STATUS:
        if isinstance(exc, kind):
            return status, code, headers
    return 500, "internal", headers


def _loc(loc: tuple[int | str, ...] | list[int | str]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path")]
    return ".".join(parts) or "body"


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors → one message naming each field, what is wrong and what is valid."""
    msgs: list[str] = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {})
            pos = err.get("loc", ("body", "?"))[-1]
            msgs.append(
                f"request body is not valid JSON: {ctx.get('error', 'decode error')} "
                f"(at character {pos})"
            )
            continue
        where = _loc(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of this endpoint's request body)"
        if where == "body" and err.get("type") in ("missing", "model_attributes_type", "dict_type"):
            msgs.append("the request body must be a JSON object (Content-Type: application/json)")
            continue
        got = err.get("input")
        shown = (
            ""
            if err.get("type") in ("missing", "extra_forbidden") or isinstance(got, (dict, list))
            else f" (got {repr(got)[:60]})"
        )
        msgs.append(f"{where}: {msg}{shown}")
    if len(errors) > 5:
        msgs.append(f"… and {len(errors) - 5} more")
    return "; ".join(msgs)


def method_table(paths: dict[str, Any]) -> list[tuple[re.Pattern[str], list[str]]]:
    """(path pattern, documented methods) of every path of an OpenAPI document."""
    table = []
    for path, item in paths.items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
        table.append((re.compile(f"^{pattern}$"), sorted(m.upper() for m in item)))
    return table


def allowed_methods(table: list[tuple[re.Pattern[str], list[str]]], path: str) -> list[str]:
    """Every documented method at ``path`` (one route per method: Starlette's own 405 names
    only the first matching route's)."""
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""
    table: list[tuple[re.Pattern[str], list[str]]] = []  # built on the first 405

    @app.exception_handler(FusionrecError)
    async def _core(request: Request, exc: FusionrecError) -> JSONResponse:
        status, code, headers = status_of(exc)
        if status >= 500 and not isinstance(exc, ApiError):
            log.warning("%s: %s", type(exc).__name__, exc)
        settings = getattr(request.state, "settings", None)
        roots = (settings.store,) if settings is not None else ()
        return JSONResponse(
            error_body(code, hide_paths(str(exc), roots)), status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("invalid_request", validation_message(list(exc.errors()))), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            if not table:
                table.extend(method_table(request.app.openapi()["paths"]))
            headers["Allow"] = ", ".join(allowed_methods(table, request.url.path))
            message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled %s", type(exc).__name__)
        return JSONResponse(
            error_body("internal", "internal error; see the server log"), status_code=500
        )
