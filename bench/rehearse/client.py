"""One HTTP call, timed and recorded in the ledger.

Each role (shoppers, admin, hostile client) has its own client bound to its own loopback
address (127.0.0.1, .3, .2), so nginx and the replicas see three clients, as a storefront's
would be: a hostile client's failed credentials never throttle the shoppers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.rehearse.ledger import Call, Ledger


@dataclass
class Reply:
    status: int  # 0: no HTTP answer
    ms: float
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def kind_of(status: int, headers: dict[str, str], error: str) -> str:
    if status == 0:
        return error or "no_answer"
    if status < 400:
        return "ok"
    if status == 503:
        return "503_retry_after" if "retry-after" in headers else "503_no_retry_after"
    if status >= 500:
        return f"http_{status}"
    return f"http_{status}"


class Http:
    def __init__(
        self,
        base_url: str,
        ledger: Ledger,
        role: str,
        *,
        local_address: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.role = role
        self.base_url = base_url
        transport = httpx.AsyncHTTPTransport(local_address=local_address, retries=0)
        self.client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            headers=headers or {},
            timeout=httpx.Timeout(timeout_s, connect=3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        case: str = "",
        record: bool = True,
    ) -> Reply:
        t = self.ledger.now()
        start = time.perf_counter()
        hdrs = dict(headers or {})
        if json is not None:
            content = orjson.dumps(json)
            hdrs.setdefault("content-type", "application/json")
        reply = await self._send(method, path, content, hdrs, params)
        reply.ms = (time.perf_counter() - start) * 1000
        if reply.status >= 500 and self.role != "hostile" and len(self.ledger.notes) < 400:
            self.ledger.note(f"{self.role} {endpoint} {reply.status}: {str(reply.body)[:160]}")
        if record:
            self.ledger.calls.append(
                Call(
                    t=t,
                    endpoint=endpoint,
                    role=self.role,
                    status=reply.status,
                    ms=reply.ms,
                    kind=kind_of(reply.status, reply.headers, reply.error),
                    upstream=reply.headers.get("x-upstream", ""),
                    case=case,
                )
            )
        return reply

    async def _send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: dict[str, str],
        params: dict[str, Any] | None,
    ) -> Reply:
        try:
            r = await self.client.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TimeoutException:
            return Reply(0, 0.0, error="timeout")
        except httpx.HTTPError as exc:
            return Reply(0, 0.0, error=f"connection_error:{type(exc).__name__}")
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = r.text[:500]
        return Reply(r.status_code, 0.0, body=body, headers=dict(r.headers))

    async def close(self) -> None:
        await self.client.aclose()
