"""Shoppers: events appended to their server-side histories, and erasure.

An event is logged durably first (``app.event_log``: committed or spooled before the 200),
then applied: a positive type appends the item to the user's history (seeded with the
bundle's training history on the first event), a negative one (dislike) hides the item from
them. Erasure goes through ``model_store.privacy.Privacy``: the tombstone first, then the
stores built here with :func:`erasable_stores`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from app.core.event_limit import UserEventLimit
from app.core.lookup import Lookup, live_row
from app.core.snapshot import Snapshot, SnapshotHolder
from app.errors import validation_message
from app.event_log import EventLogWriter
from app.history import HistoryStore
from app.keys import negative_key, user_vector_key
from app.schemas import EventIn, EventResult, EventsBatchOut
from app.vector_cache import VectorCache
from model_store.errors import DependencyError, InvalidInputError, NotFoundError
from model_store.events.log import Event
from model_store.privacy import Erasable, Privacy


class Shoppers:
    """Shopper events and erasure."""

    def __init__(
        self,
        *,
        snapshots: SnapshotHolder,
        lookup: Lookup,
        privacy: Privacy,
        event_log: EventLogWriter | None,
        event_types: Mapping[str, float],
        user_limit: UserEventLimit | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.user_limit = user_limit or UserEventLimit(0)
        self.lookup = lookup
        self.privacy = privacy
        self.event_log = event_log
        self.event_types = dict(event_types)

    async def add_event(self, *, request: EventIn) -> int:
        """Log the event durably, then apply it; returns the length of the user's history."""
        snap = self.snapshots.ready()
        event = self._event(snap, request)
        self.user_limit.check(event.user_key)
        if self.event_log is not None:  # durable first: a 503 here leaves nothing half-done
            await self.event_log.record([event])
        return await self._apply(snap, request, event)

    async def add_events(self, *, events: Sequence[Mapping[str, Any]]) -> EventsBatchOut:
        """A batch: each event validated on its own; the valid ones logged durably in one
        write, then applied in order. A refused event is named in its result."""
        snap = self.snapshots.ready()
        results = [EventResult(index=i, accepted=False) for i in range(len(events))]
        valid: list[tuple[int, EventIn, Event]] = []
        for i, raw in enumerate(events):
            try:
                request = EventIn.model_validate(raw)
                event = self._event(snap, request)
                wait = self.user_limit.take(event.user_key)
                if wait is not None:
                    results[i].error = self.user_limit.message(wait)
                    continue
                valid.append((i, request, event))
            except ValidationError as exc:
                results[i].error = validation_message([dict(e) for e in exc.errors()])
            except (InvalidInputError, NotFoundError) as exc:
                results[i].error = str(exc)
        if self.event_log is not None and valid:
            await self.event_log.record([event for _, _, event in valid])
        for i, request, event in valid:
            results[i].accepted = True
            results[i].history_length = await self._apply(snap, request, event)
        return EventsBatchOut(
            accepted=len(valid), refused=len(events) - len(valid), results=results
        )

    def _event(self, snap: Snapshot, request: EventIn) -> Event:
        """The log's row for a valid request (``InvalidInputError``/``NotFoundError`` for an
        unknown type or item)."""
        weight = self.event_types.get(request.type)
        if weight is None:
            raise InvalidInputError(
                f"event type {request.type!r} is not one of {sorted(self.event_types)} "
                "(FUSIONREC_EVENT_TYPES)"
            )
        live_row(snap, request.item_id, name="item_id")
        now = time.time()
        return Event(
            event_id=uuid.uuid4().hex,
            user_key=self.privacy.user_hash(request.user_id),
            item_id=request.item_id,
            type=request.type,
            weight=weight,
            timestamp=now if request.timestamp is None else request.timestamp,
            value=request.value,
            received=now,
            request_id=request.request_id,
        )

    async def _apply(self, snap: Snapshot, request: EventIn, event: Event) -> int:
        """The logged event applied to the user's history or negative feedback."""
        history, uhash = self.lookup.history, event.user_key
        if event.weight < 0:
            await history.append(negative_key(uhash), [request.item_id], [])
            stored = await history.get(uhash)
            if stored is None:
                stored = await self.lookup.bundle_history(snap, request.user_id, uhash)
            return len(stored)
        seed = await self.lookup.bundle_history(snap, request.user_id, uhash)
        n = await history.append(uhash, [request.item_id], seed)
        await self.lookup.cache.delete([user_vector_key(uhash)])
        return n

    async def forget_user(self, *, user_id: str) -> None:
        """Erase the user: a durable tombstone first (so the bundle's history of the user is
        never served again, by any replica, after restarts, and the next training drops the
        user), then the user's cached vector, history, negative feedback and logged events —
        a fixed set of keys, no scan."""
        await self.privacy.forget(user_id)


class VectorErasure:
    """The user's cached vector; Redis unreachable is an error (the erasure is retried)."""

    def __init__(self, cache: VectorCache) -> None:
        self.cache = cache

    async def erase(self, user_key: str) -> None:
        if not await self.cache.delete([user_vector_key(user_key)]):
            raise DependencyError(
                "cannot reach Redis to erase the user's cached vector; the erasure is "
                "recorded, retry the DELETE when Redis is back",
                dependency="redis",
            )


class HistoryErasure:
    """The user's history and negative feedback (``DependencyError`` when Redis is down)."""

    def __init__(self, history: HistoryStore) -> None:
        self.history = history

    async def erase(self, user_key: str) -> None:
        await self.history.delete(user_key)
        await self.history.delete(negative_key(user_key))


def erasable_stores(
    *, cache: VectorCache, history: HistoryStore, event_log: EventLogWriter | None
) -> list[Erasable]:
    """Every store holding a user's data, in the order an erasure empties them."""
    stores: list[Erasable] = [VectorErasure(cache), HistoryErasure(history)]
    if event_log is not None:
        stores.append(event_log)
    return stores
