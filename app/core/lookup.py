"""Lookups shared by the parts of the core that read and those that write.

* item ids → catalog rows (:func:`resolve`, :func:`live_row` — the one place an unknown
  item becomes a ``NotFoundError``);
* a request's ``filter`` and ``fields`` checked against the snapshot once
  (:func:`select`) and the fields attached to the answer (:func:`with_fields`);
* :class:`Lookup`: a shopper's effective history (request > stored > the bundle's training
  history, unless the shopper was forgotten) as catalog rows, and the user-vector cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from app.core.snapshot import Snapshot
from app.history import HistoryStore
from app.inference import Scored
from app.keys import negative_key, user_vector_key, vector_key
from app.metrics import Metrics
from app.vector_cache import VectorCache
from model_store.data.attributes import check_fields, parse_filter
from model_store.errors import NotFoundError
from model_store.privacy import Privacy


def live_row(snap: Snapshot, item_id: str, *, name: Literal["item", "item_id"] = "item") -> int:
    """The catalog row of a live item; ``NotFoundError`` naming ``name`` when there is
    none (or it was deleted)."""
    row = snap.live(item_id)
    if row is None:
        raise NotFoundError(
            f"{name} {item_id!r} is not in the catalog of model version {snap.version}"
        )
    return row


def resolve(snap: Snapshot, ids: Sequence[str], *, report: bool, unknown: list[str]) -> list[int]:
    """Catalog rows of the live items among ``ids``, in order; with ``report`` the others
    are added to ``unknown`` (once each)."""
    if not report and not snap.index.removed:  # the common case, on every request
        return [r for r in map(snap.row_of.get, ids) if r is not None]
    rows: list[int] = []
    for item in ids:
        row = snap.live(item)
        if row is None:
            if report and item not in unknown:
                unknown.append(item)
        else:
            rows.append(row)
    return rows


class Selection(NamedTuple):
    """A request's filter as a mask over catalog rows (None = every live row) and the
    catalog fields to return with each item."""

    allowed: np.ndarray | None
    names: list[str]


async def select(
    snap: Snapshot,
    *,
    filter: Mapping[str, Any] | None,
    fields: Sequence[str] | None,
) -> Selection:
    """Validate ``filter`` and ``fields`` against the snapshot's attributes (422 naming the
    valid ones; the filter's size is bounded before anything else); the mask is cached per
    filter by the attribute table, and a miss — a pass over the whole catalog — is computed
    in a worker thread, off the event loop."""
    attrs = snap.attrs
    conditions = parse_filter(filter, attrs.types)
    names = check_fields(fields, attrs.types)
    if not conditions:
        return Selection(attrs.mask(conditions), names)
    mask = attrs.cached(conditions)
    if mask is None:
        mask = await asyncio.to_thread(attrs.mask, conditions)
    return Selection(mask, names)


def with_fields(snap: Snapshot, items: list[Scored], names: list[str]) -> list[Scored]:
    """The requested catalog fields attached to each result."""
    if names:
        rows = [snap.row_of[i.item_id] for i in items]
        for item, values in zip(items, snap.attrs.fields(rows, names), strict=True):
            item.fields = values
    return items


class Shopper(NamedTuple):
    user_id: str
    uhash: str  # the keyed hash: the only form in which the id is stored


class Lookup:
    """A shopper's history as catalog rows and the cached user vector.

    The metric children are bound once: ``labels()`` is a dict lookup under a lock."""

    def __init__(
        self, *, history: HistoryStore, cache: VectorCache, privacy: Privacy, metrics: Metrics
    ) -> None:
        self.history = history
        self.cache = cache
        self.privacy = privacy
        self._hits = metrics.cache.labels("hit")
        self._misses = metrics.cache.labels("miss")

    def shopper(self, user_id: str | None) -> Shopper | None:
        """The shopper a request names (its id hashed once per request), or None."""
        return None if user_id is None else Shopper(user_id, self.privacy.user_hash(user_id))

    async def bundle_history(self, snap: Snapshot, user_id: str, uhash: str) -> list[str]:
        """The bundle's training history of the user, unless the user was forgotten: keyed by
        the raw id in a bundle trained on a dataset, by the user hash in one retrained from
        the event log (which stores hashes only)."""
        histories = snap.bundle.histories
        trained = histories.get(user_id) or histories.get(uhash)
        if not trained or await self.privacy.forgotten(uhash):
            return []
        return trained

    async def stored_history(self, snap: Snapshot, user_id: str, uhash: str) -> list[str]:
        """The server-side history, else the bundle's."""
        stored = await self.history.get(uhash)
        if stored is not None:
            return stored
        return await self.bundle_history(snap, user_id, uhash)

    async def history_rows(
        self,
        snap: Snapshot,
        *,
        user: Shopper | None,
        history: Sequence[str] | None,
        unknown: list[str],
    ) -> tuple[list[int], str | None]:
        """Catalog rows of the effective history — ``history`` when given, else that of
        ``user`` — and the user-vector cache key (None without rows)."""
        if history is not None:
            rows = resolve(snap, history, report=True, unknown=unknown)
            max_len = snap.bundle.config.model.max_len
            known = [snap.bundle.item_ids[r] for r in rows[-max_len:]]
            return rows, vector_key(snap.version, history=known) if rows else None
        if user is not None:
            stored = await self.stored_history(snap, user.user_id, user.uhash)
            rows = resolve(snap, stored, report=False, unknown=unknown)
            return rows, user_vector_key(user.uhash) if rows else None
        return [], None

    async def disliked_rows(self, snap: Snapshot, uhash: str, unknown: list[str]) -> list[int]:
        """Rows of the items the user gave negative feedback on (hidden from them)."""
        disliked = await self.history.get(negative_key(uhash))
        return resolve(snap, disliked, report=False, unknown=unknown) if disliked else []

    async def cached_vector(self, snap: Snapshot, key: str | None) -> np.ndarray | None:
        """The cached user vector of ``key`` for this snapshot's model, or None."""
        if key is None:
            return None
        vec = await self.cache.get(key, tag=snap.version)
        if vec is not None and vec.shape[0] == snap.item_vecs.shape[1]:
            self._hits.inc()
            return vec
        self._misses.inc()
        return None

    async def keep_vector(self, snap: Snapshot, key: str | None, vec: np.ndarray) -> None:
        if key is not None:
            await self.cache.set(key, vec, tag=snap.version)
