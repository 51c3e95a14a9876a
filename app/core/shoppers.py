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
from collections.abc import Mapping

from app.core.lookup import Lookup, live_row
from app.core.snapshot import SnapshotHolder
from app.event_log import EventLogWriter
from app.history import HistoryStore
from app.keys import negative_key, user_vector_key
from app.schemas import EventIn
from app.vector_cache import VectorCache
from model_store.errors import DependencyError, InvalidInputError
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
    ) -> None:
        self.snapshots = snapshots
        self.lookup = lookup
        self.privacy = privacy
        self.event_log = event_log
        self.event_types = dict(event_types)

    async def add_event(self, *, request: EventIn) -> int:
        """Log the event durably, then apply it; returns the length of the user's history."""
        weight = self.event_types.get(request.type)
        if weight is None:
            raise InvalidInputError(
                f"event type {request.type!r} is not one of {sorted(self.event_types)} "
                "(FUSIONREC_EVENT_TYPES)"
            )
        snap = self.snapshots.ready()
        live_row(snap, request.item_id, name="item_id")
        uhash = self.privacy.user_hash(request.user_id)
        if self.event_log is not None:  # durable first: a 503 here leaves nothing half-done
            now = time.time()
            event = Event(
                event_id=uuid.uuid4().hex,
                user_key=uhash,
                item_id=request.item_id,
                type=request.type,
                weight=weight,
                timestamp=now if request.timestamp is None else request.timestamp,
                value=request.value,
                received=now,
            )
            await self.event_log.record([event])
        history = self.lookup.history
        if weight < 0:
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
