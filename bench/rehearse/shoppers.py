"""Shoppers through the LB: sessions replaying held-out sequences (returning MovieLens users
and new, cold ones), each step a recommend followed by the shopper's next interaction —
a click (and sometimes a purchase) attributed to the answer's ``request_id`` when the
recommendation held it, else a plain view; plus reads at their own rate: recommend with
filters and inline fields, searches with typos, similar items, item pages."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.rehearse.client import Http, Reply
from bench.rehearse.dataset import Replay, search_query
from bench.rehearse.events import EventSender
from bench.rehearse.ledger import Ledger, Shown

ACTIVE = 24  # sessions in progress at once
PROPAGATION_GRACE_S = 2.0  # a hidden item may still be returned this long after the 200


@dataclass
class Session:
    user_id: str
    items: list[str]
    cold: bool
    pos: int = 0
    busy: bool = False

    @property
    def done(self) -> bool:
        return self.pos >= len(self.items)


class Shoppers:
    def __init__(
        self, http: Http, ledger: Ledger, replay: Replay, sender: EventSender, *,
        cold_share: float, seed: int, avoid: set[str],
    ) -> None:  # fmt: skip
        self.http, self.ledger, self.replay, self.sender = http, ledger, replay, sender
        self.rng = random.Random(seed)
        self.cold_share = cold_share
        users = sorted(replay.sequences)
        self.rng.shuffle(users)
        self.waiting = deque(users)
        self.active: list[Session] = []
        self.finished: deque[tuple[str, float]] = deque()  # (shopper, when): may be forgotten
        self.forgotten: set[str] = set()
        self.catalog = [i for i in replay.titles if i not in avoid]  # never hidden by admin
        self.cold_n = 0

    # -- sessions --------------------------------------------------------------------------
    def _new_session(self) -> Session | None:
        if not self.waiting:
            return None
        user = self.waiting.popleft()
        items = self.replay.sequences[user]
        if self.rng.random() < self.cold_share:
            self.cold_n += 1
            return Session(f"rh-new-{self.cold_n}", items, cold=True)
        return Session(user, items, cold=False)

    def _idle(self) -> Session | None:
        for s in [s for s in self.active if s.done and not s.busy]:
            self.active.remove(s)
            self.finished.append((s.user_id, self.ledger.now()))
        while len(self.active) < ACTIVE:
            fresh = self._new_session()
            if fresh is None:
                break
            self.active.append(fresh)
        idle = [s for s in self.active if not s.busy and not s.done]
        return self.rng.choice(idle) if idle else None

    def take_finished(self, queued: set[str], settle_s: float = 5.0) -> str | None:
        """A shopper who finished ``settle_s`` ago and has no event waiting for a batch."""
        for user, t in list(self.finished):
            if t + settle_s < self.ledger.now() and user not in queued:
                self.finished.remove((user, t))
                return user
        return None

    def take_waiting(self) -> str | None:
        """A returning shopper who has not shopped yet (and now never will): their imported
        history is in the log and in the first bundle."""
        return self.waiting.pop() if self.waiting else None

    def any_user(self) -> str | None:
        users = [s.user_id for s in self.active if s.user_id not in self.forgotten]
        return self.rng.choice(users) if users else None

    # -- answers ---------------------------------------------------------------------------
    def _shown(self, endpoint: str, reply: Reply, user_id: str | None) -> list[str]:
        if not reply.ok or not isinstance(reply.body, dict):
            return []
        items = [str(i.get("item_id")) for i in reply.body.get("items", [])]
        rid = reply.body.get("request_id")
        shown = Shown(
            t=self.ledger.now() - reply.ms / 1000,
            endpoint=endpoint,
            version=str(reply.body.get("model_version", "")),
            request_id=str(rid) if rid else None,
            user_id=user_id,
            items=items,
        )
        self.ledger.saw_items(shown, PROPAGATION_GRACE_S)
        return items

    async def step(self) -> None:
        """One shopper step: recommend, then the shopper's next interaction."""
        s = self._idle()
        if s is None:
            return
        s.busy = True
        try:
            reply = await self.http.call(
                "POST", "/v1/recommend", "recommend", json={"user_id": s.user_id, "k": 10}
            )
            items = self._shown("step", reply, s.user_id)
            rid = reply.body.get("request_id") if isinstance(reply.body, dict) else None
            target = s.items[s.pos]
            clicked, bought = target in items, False
            if clicked:
                await self.sender.send(s.user_id, target, "click", rid)
                if self.rng.random() < 0.3:
                    bought = True
                    await self.sender.send(s.user_id, target, "purchase", rid)
            else:
                await self.sender.send(s.user_id, target, "view", None)
            s.pos += 1
            if reply.ok and isinstance(reply.body, dict):
                version = str(reply.body.get("model_version", ""))
                self.ledger.steps.append((version, clicked, bought))
        finally:
            s.busy = False

    # -- reads -----------------------------------------------------------------------------
    async def read(self) -> None:
        r = self.rng.random()
        if r < 0.30:
            await self._recommend()
        elif r < 0.42:
            await self._recommend_filtered()
        elif r < 0.67:
            await self._search()
        elif r < 0.87:
            await self._similar()
        else:
            item = self.rng.choice(self.catalog)
            await self.http.call("GET", f"/v1/items/{item}", "item")

    async def _recommend(self) -> None:
        user = self.any_user()
        body: dict[str, Any] = {"user_id": user, "k": 10, "explain": self.rng.random() < 0.2}
        reply = await self.http.call("POST", "/v1/recommend", "recommend", json=body)
        self._shown("recommend", reply, user)

    def _filter(self) -> dict[str, Any]:
        return dict(self.rng.choice(self.replay.filters))

    async def _recommend_filtered(self) -> None:
        history = self.rng.sample(self.catalog, 5)
        body = {"history": history, "k": 10, "filter": self._filter(), "fields": ["title"]}
        reply = await self.http.call("POST", "/v1/recommend", "recommend", json=body, case="filter")
        self._shown("recommend", reply, None)

    async def _search(self) -> None:
        item = self.rng.choice(self.catalog)
        query = search_query(self.replay.titles[item], self.rng)
        body: dict[str, Any] = {"query": query, "k": 10}
        if self.rng.random() < 0.5:
            body["mode"] = "hybrid"
        if self.rng.random() < 0.3:
            body["user_id"] = self.any_user()
        if self.rng.random() < 0.2:
            body["filter"] = self._filter()
        reply = await self.http.call("POST", "/v1/search", "search", json=body)
        items = self._shown("search", reply, body.get("user_id"))
        if reply.ok and "filter" not in body:
            mode = body.get("mode", "dense")
            self.ledger.search_hits[f"{mode}:{'hit' if item in items[:5] else 'miss'}"] += 1

    async def _similar(self) -> None:
        item = self.rng.choice(self.catalog)
        if self.rng.random() < 0.3:
            body = {"k": 10, "filter": self._filter(), "fields": ["title"]}
            reply = await self.http.call(
                "POST", f"/v1/items/{item}/similar", "similar", json=body, case="filter"
            )
        else:
            reply = await self.http.call("GET", f"/v1/items/{item}/similar", "similar")
        self._shown("similar", reply, None)
