"""Shopper events, one at a time (``POST /v1/events``) or in batches
(``POST /v1/events:batch``), each recorded with the answer it got: accepted (200, or
accepted in the batch's per-event answer), refused, or unknown (no answer; the event may or
may not have been written). Attribution: an event names the recommendation's
``request_id``; a server that refuses the field (422) is recorded and the event is sent
again without it, so the shopper's history still moves on."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.rehearse.client import Http, Reply
from bench.rehearse.ledger import Ledger, Outcome, SentEvent

BATCH_MAX = 50
BATCH_EVERY_S = 1.0


def _outcome(reply: Reply) -> Outcome:
    if reply.ok:
        return "ok"
    if reply.status == 0 or reply.status >= 500:
        return "unknown"  # no answer, or an error that says nothing of the write
    return "refused"


def batch_outcomes(body: Any, n: int) -> list[Outcome] | None:
    """Per-event outcomes of a batch answer, in whichever of the usual shapes it comes:
    a list of per-event results, or the indices of the refused ones. None: unreadable."""
    if not isinstance(body, dict):
        return None
    for key in ("results", "events", "items", "answers"):
        rows = body.get(key)
        if isinstance(rows, list) and len(rows) == n and all(isinstance(r, dict) for r in rows):
            return ["ok" if _accepted(r) else "refused" for r in rows]
    for key in ("rejected", "refused", "errors"):
        rows = body.get(key)
        if isinstance(rows, list):
            bad = {r.get("index") for r in rows if isinstance(r, dict)}
            if all(isinstance(i, int) for i in bad):
                return ["refused" if i in bad else "ok" for i in range(n)]
    return None


def _accepted(row: dict[str, Any]) -> bool:
    if "accepted" in row:
        return bool(row["accepted"])
    if "status" in row:
        return row["status"] in (200, 201, "accepted", "ok", "stored", "duplicate")
    return "error" not in row


class EventSender:
    def __init__(self, http: Http, ledger: Ledger, *, batch_share: float, seed: int) -> None:
        self.http, self.ledger = http, ledger
        self.batch_share = batch_share
        self.rng = random.Random(seed + 1)
        self.queue: list[dict[str, Any]] = []
        self.batch_ok = batch_share > 0
        self.request_id_refused = 0

    def _body(self, user: str, item: str, type_: str, rid: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": user, "item_id": item, "type": type_}
        if self.rng.random() < 0.67:  # the rest are stamped by the server
            body["timestamp"] = time.time()
        if rid:
            body["request_id"] = rid
        return body

    def _record(
        self, body: dict[str, Any], via: str, outcome: Outcome, status: int, why: str = ""
    ) -> None:
        self.ledger.events.append(
            SentEvent(
                body["user_id"],
                body["item_id"],
                body["type"],
                body.get("request_id"),
                via,
                outcome,
                self.ledger.now(),
                status,
                why,
            )
        )

    async def send(self, user: str, item: str, type_: str, rid: str | None) -> None:
        body = self._body(user, item, type_, rid)
        if self.batch_ok and self.rng.random() < self.batch_share:
            self.queue.append(body)
            return
        await self.single(body)

    async def single(self, body: dict[str, Any]) -> None:
        reply = await self.http.call("POST", "/v1/events", "event", json=body)
        if reply.status == 422 and "request_id" in body and "request_id" in str(reply.body):
            self.request_id_refused += 1
            body = {k: v for k, v in body.items() if k != "request_id"}
            reply = await self.http.call("POST", "/v1/events", "event", json=body, case="retry")
        self._record(body, "single", _outcome(reply), reply.status, str(reply.body)[:200])

    async def flush(self) -> None:
        batch, self.queue = self.queue[:BATCH_MAX], self.queue[BATCH_MAX:]
        if not batch:
            return
        reply = await self.http.call(
            "POST", "/v1/events:batch", "events_batch", json={"events": batch}
        )
        if reply.status in (404, 405):
            self.batch_ok = False
            self.ledger.not_available["events_batch"] = (
                f"POST /v1/events:batch answered {reply.status}"
            )
            for body in batch + self.queue:
                await self.single(body)
            self.queue = []
            return
        outcomes = batch_outcomes(reply.body, len(batch)) if reply.ok else None
        if outcomes is None:
            outcome: Outcome = _outcome(reply) if not reply.ok else "unknown"
            if reply.ok:
                self.ledger.note(f"unreadable events:batch answer: {str(reply.body)[:200]}")
            outcomes = [outcome] * len(batch)
        for body, outcome in zip(batch, outcomes, strict=True):
            self._record(body, "batch", outcome, reply.status)

    async def run_batches(self, until: float) -> None:
        while self.ledger.now() < until:
            await asyncio.sleep(BATCH_EVERY_S)
            try:
                await self.flush()
            except Exception as exc:  # a driver never stops the rehearsal
                self.ledger.note(f"batch driver error: {exc!r}")
        while self.queue:
            await self.flush()
