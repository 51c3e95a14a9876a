"""HTTP limits at the socket: uvicorn's httptools protocol with a header deadline, a header
size cap and a body deadline, and the uvicorn options every server of fusionrec runs with.

uvicorn (0.3x) has no header-size limit with httptools and no header or body read
timeout: a client that trickles its headers (slowloris) or sends a 32 MiB header keeps a
connection and memory forever. :class:`GuardedHttpToolsProtocol` closes a connection that

* has not sent a complete request line + headers ``header_timeout_s`` after it connected
  (or after the first byte of its next request): 408, closed;
* sends more than ``max_header_bytes`` before its headers are complete: 431, closed;
* has not sent the whole body ``body_timeout_s`` after its headers: closed.

Idle keep-alive connections are closed after ``timeout_keep_alive``, and uvicorn answers 503
beyond ``limit_concurrency`` connections + tasks (:func:`uvicorn_options`). The limits are
module settings, configured from the process's ``Settings`` (and kept in the environment
so that ``--workers`` child processes read the same ones).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import HttpSettings

_ENV = {
    "header_timeout_s": "FUSIONREC_HTTP_HEADER_TIMEOUT_S",
    "max_header_bytes": "FUSIONREC_HTTP_MAX_HEADER_BYTES",
    "body_timeout_s": "FUSIONREC_HTTP_BODY_TIMEOUT_S",
}
_DEFAULTS = {"header_timeout_s": 10.0, "max_header_bytes": 65536.0, "body_timeout_s": 30.0}
LIMITS: dict[str, float] = {
    name: float(os.environ.get(var, _DEFAULTS[name])) for name, var in _ENV.items()
}


def configure(http: HttpSettings) -> None:
    values = {
        "header_timeout_s": http.header_timeout_s,
        "max_header_bytes": float(http.max_header_bytes),
        "body_timeout_s": http.body_timeout_s,
    }
    LIMITS.update(values)
    for name, var in _ENV.items():
        os.environ[var] = repr(values[name])


def _response(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a header deadline, a header size cap and a body deadline."""

    _deadline: asyncio.TimerHandle | None = None
    _in_headers = True
    _header_bytes = 0
    _body_pending = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers, self._header_bytes = True, 0
        self._arm(LIMITS["header_timeout_s"], self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: bytes, text: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_response(status, text))
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._in_headers:
            self._refuse(b"408 Request Timeout", b"request headers not received in time\n")

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self._body_pending and not self.transport.is_closing():
            if self.cycle is not None:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > LIMITS["max_header_bytes"]:
                self._refuse(
                    b"431 Request Header Fields Too Large",
                    b"request line and headers exceed FUSIONREC_HTTP_MAX_HEADER_BYTES\n",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._in_headers, self._header_bytes = True, 0
            self._arm(LIMITS["header_timeout_s"], self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._body_pending = True
        self._arm(LIMITS["body_timeout_s"], self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()
        super().on_message_complete()


def uvicorn_options(http: HttpSettings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run``/``uvicorn.Config`` for the HTTP limits."""
    configure(http)
    trusted = http.forwarded_allow_ips
    return {
        "http": GuardedHttpToolsProtocol,
        # client addresses (rate limits, failed-auth limits) from X-Forwarded-For only when
        # the operator names the proxies that set it (compose: the nginx LB)
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or "127.0.0.1",
        "timeout_keep_alive": http.keep_alive_s,
        "limit_concurrency": http.limit_concurrency,
        "h11_max_incomplete_event_size": http.max_header_bytes,
        "access_log": False,  # FUSIONREC_ACCESS_LOG (app.middleware.AccessLog) instead
    }
