"""The admin client: adds, edits, hides, shows and deletes items (its own ``rh-item-*`` and a
few popular catalog items), sometimes two writes at the same moment on the two replicas,
and forgets shoppers who finished their session (first of all, at its first tick, a returning
shopper who has not shopped yet, so that every retrain reads its data after an erasure).
After each write answered 200 it watches the other replica until it shows the change (the
propagation time)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from bench.rehearse.client import Http, Reply
from bench.rehearse.ledger import CatalogWrite, Ledger, Outcome
from bench.rehearse.shoppers import Shoppers

WATCH_S = 10.0  # how long to watch the other replica for a change


def write_outcome(reply: Reply) -> Outcome:
    """ok; unknown when no replica's answer came back (the write may have happened);
    refused when a replica said no."""
    if reply.ok:
        return "ok"
    lb_said = reply.status == 503 and "upstream_unavailable" in str(reply.body)
    return "unknown" if reply.status in (0, 502, 504) or lb_said else "refused"


def shows(reply: Reply, expect: dict[str, Any] | None) -> bool:
    """Whether a GET /v1/items/{id} answer shows the expected state."""
    if expect is None:
        return reply.status == 404
    if reply.status != 200 or not isinstance(reply.body, dict):
        return False
    fields = reply.body.get("fields") or {}
    for key, value in expect.items():
        got = fields.get(key, True if key == "available" else None)
        if got != value:
            return False
    return True


class Admin:
    def __init__(
        self, lb: Http, replicas: dict[str, Http], ledger: Ledger, shoppers: Shoppers, *,
        text_columns: list[str], genres: list[str], catalog_targets: list[str], seed: int,
    ) -> None:  # fmt: skip
        self.lb, self.replicas, self.ledger, self.shoppers = lb, replicas, ledger, shoppers
        self.rng = random.Random(seed + 2)
        self.text_columns = text_columns or ["title"]
        self.genres = genres or ["Drama"]
        self.targets = catalog_targets  # popular catalog items it hides and shows again
        self.live: dict[str, dict[str, Any]] = {}  # item -> expected fields
        self.hidden: set[str] = set()
        self.n = 0
        self.ops = 0

    # -- one write ----------------------------------------------------------------------
    def _new_item(self) -> dict[str, Any]:
        self.n += 1
        item: dict[str, Any] = {"item_id": f"rh-item-{self.n}"}
        for col in self.text_columns:
            item[col] = f"Rehearsal special {self.n} {self.rng.choice(self.genres)} night"
        if "genres" in self.text_columns:
            item["genres"] = "|".join(self.rng.sample(self.genres, k=min(2, len(self.genres))))
        return item

    async def _write(
        self, http: Http, op: str, method: str, item_id: str, body: Any,
        expect: dict[str, Any] | None, *, concurrent: bool = False,
    ) -> CatalogWrite:  # fmt: skip
        path = "/v1/items" if op == "add" else f"/v1/items/{item_id}"
        t = self.ledger.now()
        if expect is not None and expect.get("available", True):
            self.ledger.hidden_since.pop(item_id, None)  # may be visible from now on
        reply = await http.call(method, path, "admin_write", json=body, case=op)
        outcome = write_outcome(reply)
        w = CatalogWrite(
            op, item_id, expect, outcome, t, self.ledger.now(), reply.status,
            replica=reply.headers.get("x-upstream", http.base_url), concurrent=concurrent,
        )  # fmt: skip
        self.ledger.writes.append(w)
        if reply.ok and (expect is None or expect.get("available") is False):
            self.ledger.hidden_since.setdefault(item_id, w.t_ack)
        if outcome == "refused" and reply.status >= 500:
            self.ledger.note(f"admin {op} {item_id}: {reply.status} {str(reply.body)[:160]}")
        return w

    async def _watch(self, w: CatalogWrite) -> None:
        """The propagation time: until every replica other than the writer shows it."""
        others = [h for addr, h in self.replicas.items() if addr not in w.replica] or list(
            self.replicas.values()
        )
        t0 = self.ledger.now()
        while self.ledger.now() - t0 < WATCH_S:
            replies = [
                await h.call("GET", f"/v1/items/{w.item_id}", "probe", record=False) for h in others
            ]
            if all(shows(r, w.expect) for r in replies):
                w.propagation_s = self.ledger.now() - w.t_ack
                return
            await asyncio.sleep(0.1)

    async def _do(self, op: str, method: str, item_id: str, body: Any, expect: Any) -> None:
        w = await self._write(self.lb, op, method, item_id, body, expect)
        self._forget_refused_add(w)
        if w.outcome == "ok":
            await self._watch(w)

    def _forget_refused_add(self, w: CatalogWrite) -> None:
        """An add a replica refused (a 503 during an outage) did not happen, and one that got
        no answer may not have: the admin, like any client, does not edit that item
        afterwards (a 404 would be the right answer)."""
        if w.op == "add" and w.outcome in ("refused", "unknown"):
            self.live.pop(w.item_id, None)

    # -- the schedule -------------------------------------------------------------------
    async def tick(self) -> None:
        self.ops += 1
        if self.ops == 1 and (user := self.shoppers.take_waiting()):
            # an erasure at the start: every retrain reads its data after one (the check
            # forgotten_not_in_next_bundle needs a shopper forgotten before a snapshot)
            await self._forget(user)
            return
        if self.ops % 10 == 5:
            await self._pair()
            return
        r = self.rng.random()
        own = sorted(self.live)
        if r < 0.3 or not own:
            item = self._new_item()
            self.live[item["item_id"]] = {c: item[c] for c in self.text_columns}
            await self._do(
                "add", "POST", item["item_id"], {"items": [item]}, self.live[item["item_id"]]
            )
        elif r < 0.5:
            await self._edit(self.rng.choice(own))
        elif r < 0.65:
            await self._hide(self.rng.choice(own + self.targets))
        elif r < 0.75:
            await self._delete(self.rng.choice(own))
        elif r < 0.85 and (user := self.shoppers.take_finished(self.queued())):
            await self._forget(user)
        elif self.hidden:
            await self._show(self.rng.choice(sorted(self.hidden)))

    async def _edit(self, item_id: str) -> None:
        col = self.text_columns[0]
        value = f"Rehearsal special {item_id} revised {self.ops}"
        self.live[item_id] = {**self.live[item_id], col: value}
        await self._do("edit", "PATCH", item_id, {col: value}, {col: value})

    async def _hide(self, item_id: str) -> None:
        self.hidden.add(item_id)
        await self._do("hide", "PATCH", item_id, {"available": False}, {"available": False})

    async def _show(self, item_id: str) -> None:
        self.hidden.discard(item_id)
        await self._do("show", "PATCH", item_id, {"available": True}, {"available": True})

    async def _delete(self, item_id: str) -> None:
        self.live.pop(item_id, None)
        self.hidden.discard(item_id)
        await self._do("delete", "DELETE", item_id, None, None)

    async def _pair(self) -> None:
        """Two adds at the same moment, one on each replica (the lost-write race)."""
        items = [self._new_item(), self._new_item()]
        for item in items:
            self.live[item["item_id"]] = {c: item[c] for c in self.text_columns}
        writes = await asyncio.gather(
            *(
                self._write(h, "add", "POST", item["item_id"], {"items": [item]},
                            self.live[item["item_id"]], concurrent=True)
                for h, item in zip(self.replicas.values(), items, strict=False)
            )
        )  # fmt: skip
        for w in writes:
            self._forget_refused_add(w)
            if w.outcome == "ok":
                await self._watch(w)

    def queued(self) -> set[str]:
        return {str(e["user_id"]) for e in self.shoppers.sender.queue}

    async def _forget(self, user_id: str) -> None:
        self.shoppers.forgotten.add(user_id)
        reply = await self.lb.call("DELETE", f"/v1/users/{user_id}", "forget")
        if reply.status == 204 or reply.ok:
            self.ledger.forgotten[user_id] = self.ledger.now()
        else:
            self.ledger.note(f"forget {user_id}: {reply.status} {str(reply.body)[:160]}")
