"""Catalog writes on the live service: upsert, patch (attribute or text edit), delete.

A write is a row change in the catalog table (``model_store.catalog.table``), not a bundle
version: validated against the snapshot, new or edited text encoded once, here, by the
text path (``model_store.catalog.changes``, outside any lock), then written in ONE
transaction that takes the store's next sequence number — concurrent writes on any number
of replicas are serialised by the database, none is lost. Attributes alone (``available``
…) need no LM work. The answer comes once this replica has applied the change
(``CatalogFollower.sync``: read-your-writes); the other replicas apply it from the table
(woken by Redis pub/sub, else within their 0.5 s poll). The database down: writes answer
503 with Retry-After (``DependencyError``), reads keep serving.

Clients may write conditionally: each item's ``version`` is its ``ETag``; ``If-Match`` on
PATCH and DELETE answers 412 when the item changed since.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from app.core.catalog_follow import CatalogFollower
from app.core.lookup import live_row
from app.core.snapshot import Snapshot, SnapshotHolder
from app.schemas import ItemPatch, ItemsUpsert
from model_store.catalog.changes import encode_items, validate_items
from model_store.catalog.table import CatalogStore, ItemRow, ItemWrite
from model_store.catalog.writes import delete_write, patch_writes, upsert_writes
from model_store.errors import InvalidInputError, NotReadyError


@dataclass
class UpsertResult:
    model_version: str
    added: list[str]
    updated: list[str]
    seq: int = 0
    versions: dict[str, int] | None = None  # item -> its new version (the ETag)


class Catalog:
    """Catalog writes through the table; ``follower`` applies them here and elsewhere."""

    def __init__(
        self, *, snapshots: SnapshotHolder, store: CatalogStore, redis_url: str | None = None
    ) -> None:
        self.snapshots = snapshots
        self.store = store
        self.follower = CatalogFollower(snapshots, store, redis_url=redis_url)

    async def _write(self, snap: Snapshot, writes: Sequence[ItemWrite]) -> UpsertResult:
        """Write, apply here, tell the other replicas; added = not live here before."""
        seq, rows = await asyncio.to_thread(self.store.write, writes)
        await self.follower.sync(seq)
        await self.follower.notify(seq)
        return _result(snap, self.snapshots.ready(), rows, seq)

    async def _live(self, item_id: str) -> Snapshot:
        """The snapshot, caught up first when ``item_id`` is not live in it (written on
        another replica a moment ago); NotFoundError when it is not in the catalog."""
        snap = self.snapshots.ready()
        if snap.live(item_id) is None:
            await self.follower.sync()
            snap = self.snapshots.ready()
        live_row(snap, item_id)
        return snap

    async def upsert(self, *, request: ItemsUpsert) -> UpsertResult:
        """Add or edit items; one change of the catalog table, applied here at once."""
        snap = self.snapshots.ready()
        if snap.text is None:
            raise NotReadyError(f"item upserts are unavailable: {snap.text_error}")
        raw = [i.model_dump() for i in request.items]
        records = validate_items(snap.bundle, raw)
        emb = await asyncio.to_thread(
            encode_items, snap.bundle, records, device=self.snapshots.device
        )  # the LM work, outside every lock
        removed = set(snap.index.removed)
        return await self._write(
            snap, upsert_writes(snap.bundle, records, emb, raw, removed=removed)
        )

    async def patch(
        self, *, item_id: str, request: ItemPatch, if_match: int | None = None
    ) -> UpsertResult:
        """Edit some fields of a live item (text fields are re-encoded; attributes such as
        ``available`` alone need no LM work)."""
        values = request.model_dump()
        if not values:
            raise InvalidInputError("the body names no field to change")
        if "item_id" in values:
            raise InvalidInputError("item_id: cannot be changed by PATCH (it is in the path)")
        snap = await self._live(item_id)
        removed = set(snap.index.removed)
        if set(values) & set(snap.bundle.text_columns):
            if snap.text is None:
                raise NotReadyError(f"text edits are unavailable: {snap.text_error}")
            raw = [{"item_id": item_id, **values}]
            records = validate_items(snap.bundle, raw)
            emb = await asyncio.to_thread(
                encode_items, snap.bundle, records, device=self.snapshots.device
            )
            writes = upsert_writes(
                snap.bundle, records, emb, raw, removed=removed, if_match=if_match
            )
        else:
            writes = patch_writes(snap.bundle, item_id, values, removed=removed, if_match=if_match)
        return await self._write(snap, writes)

    async def delete(self, *, item_id: str, if_match: int | None = None) -> UpsertResult:
        """Delete an item from every answer on every replica (its row stays, marked
        deleted)."""
        snap = await self._live(item_id)
        write = delete_write(
            snap.bundle, item_id, removed=set(snap.index.removed), if_match=if_match
        )
        return await self._write(snap, [write])


def _result(before: Snapshot, after: Snapshot, rows: Sequence[ItemRow], seq: int) -> UpsertResult:
    added = [r.item_id for r in rows if not r.deleted and before.live(r.item_id) is None]
    updated = [r.item_id for r in rows if not r.deleted and before.live(r.item_id) is not None]
    return UpsertResult(after.version, added, updated, seq, {r.item_id: r.version for r in rows})
