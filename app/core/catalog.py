"""Catalog writes on the live service: upsert, patch (attribute or text edit), delete.

Each change is validated and — for new or edited text — encoded through the text path
(``model_store.catalog.changes``) outside any lock; then applied to the live model and
index under the model lock (``indexer.catalog``: requests wait for microseconds, not for
the language model), published as a new CURRENT bundle version
(``indexer.publish.persist_update``) so a restart keeps it, and served by a new snapshot;
if publishing fails the change is undone. Attributes alone (``available`` …) reuse the
item's text embedding: no LM work. Other replicas hear of the new version through
``SnapshotHolder.published`` (``app.core.follow``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from app.core.lookup import live_row
from app.core.snapshot import Snapshot, SnapshotHolder, attribute_table, popular_rows
from app.schemas import ItemPatch, ItemsUpsert
from indexer import catalog
from indexer.publish import persist_update
from model_store.bundle.io import read_manifest
from model_store.catalog.changes import Change, current_text, encode_items, validate_items
from model_store.errors import InvalidInputError, NotReadyError


@dataclass
class UpsertResult:
    model_version: str
    added: list[str]
    updated: list[str]


class Catalog:
    """Catalog writes, one at a time (the holder's admin lock, shared with reloads)."""

    def __init__(self, *, snapshots: SnapshotHolder) -> None:
        self.snapshots = snapshots

    async def upsert(self, *, request: ItemsUpsert) -> UpsertResult:
        """Add or edit items; live at once, persisted as a new CURRENT bundle version."""
        holder = self.snapshots
        async with holder.admin_lock:
            snap = holder.ready()
            if snap.text is None:
                raise NotReadyError(f"item upserts are unavailable: {snap.text_error}")
            records = validate_items(snap.bundle, [i.model_dump() for i in request.items])
            emb = await asyncio.to_thread(
                encode_items, snap.bundle, records, device=holder.device
            )  # the LM work, outside the model lock
            new_snap, applied = await asyncio.to_thread(
                apply_and_publish,
                snap,
                Change(records, emb),
                store=holder.store,
                lock=holder.model_lock,
            )
            holder.install(new_snap, full_gc=False)
        await holder.published(new_snap.version)
        return UpsertResult(new_snap.version, applied.added, applied.updated)

    async def patch(self, *, item_id: str, request: ItemPatch) -> UpsertResult:
        """Edit some fields of a live item (text fields are re-encoded; attributes such as
        ``available`` alone need no LM work); persisted as a new CURRENT bundle version."""
        values = request.model_dump()
        if not values:
            raise InvalidInputError("the body names no field to change")
        if "item_id" in values:
            raise InvalidInputError("item_id: cannot be changed by PATCH (it is in the path)")
        holder = self.snapshots
        async with holder.admin_lock:
            snap = holder.ready()
            live_row(snap, item_id)
            records = validate_items(snap.bundle, [{"item_id": item_id, **values}])
            if set(values) & set(snap.bundle.text_columns):
                if snap.text is None:
                    raise NotReadyError(f"text edits are unavailable: {snap.text_error}")
                emb = await asyncio.to_thread(
                    encode_items, snap.bundle, records, device=holder.device
                )
            else:
                emb = current_text(snap.bundle, records)
            new_snap, applied = await asyncio.to_thread(
                apply_and_publish,
                snap,
                Change(records, emb),
                store=holder.store,
                lock=holder.model_lock,
            )
            holder.install(new_snap, full_gc=False)
        await holder.published(new_snap.version)
        return UpsertResult(new_snap.version, applied.added, applied.updated)

    async def delete(self, *, item_id: str) -> str:
        """Delete an item from every answer (its catalog row stays, marked removed);
        persisted as a new CURRENT bundle version, which is returned."""
        holder = self.snapshots
        async with holder.admin_lock:
            snap = holder.ready()
            live_row(snap, item_id)
            new_snap = await asyncio.to_thread(
                remove_and_publish, snap, [item_id], store=holder.store, lock=holder.model_lock
            )
            holder.install(new_snap, full_gc=False)
        await holder.published(new_snap.version)
        return new_snap.version


def apply_and_publish(
    snap: Snapshot, change: Change, *, store: Path, lock: threading.Lock
) -> tuple[Snapshot, catalog.Applied]:
    """Apply ``change`` to the live model and index under ``lock``, publish it as the new
    CURRENT version and return the snapshot that serves it; undone if publishing fails."""
    bundle, model = snap.bundle, snap.bundle.model
    with lock:
        applied = catalog.apply_change(bundle, snap.index, change, text_index=snap.text_index)
        with torch.no_grad():
            model.serving_encoder()  # re-traced for the new catalog before it serves
    n_new = len(applied.added)
    item_vecs = np.concatenate(
        [snap.item_vecs, np.zeros((n_new, snap.item_vecs.shape[1]), np.float32)]
    )
    item_vecs[applied.rows] = applied.vectors
    new_rows = applied.rows[len(applied.updated) :]
    row_of = dict(snap.row_of)
    row_of.update({bundle.item_ids[int(r)]: int(r) for r in new_rows})
    try:
        path = persist_update(
            store,
            bundle,
            snap.index,
            note={
                "op": "upsert",
                "added": n_new,
                "updated": len(applied.updated),
                "by": "service",
            },
            text_index=snap.text_index,
        )
    except BaseException:
        with lock:
            applied.undo()
            with torch.no_grad():
                model.serving_encoder()
        raise
    bundle.path, bundle.manifest = path, read_manifest(path)
    rows = np.asarray([row_of[str(i)] for i in change.records["item_id"]], dtype=np.int64)
    with lock:
        snap.lexical.upsert(rows, change.records)
    new_snap = replace(
        snap,
        version=bundle.version,
        row_of=row_of,
        item_vecs=item_vecs,
        popular=np.concatenate([snap.popular, new_rows]),
        popular_scores=np.concatenate([snap.popular_scores, np.zeros(n_new, np.float32)]),
        attrs=attribute_table(bundle, snap.index.removed),
    )
    return new_snap, applied


def remove_and_publish(
    snap: Snapshot, ids: Sequence[str], *, store: Path, lock: threading.Lock
) -> Snapshot:
    """Take ``ids`` out of the live index (their rows stay, marked removed), publish the new
    CURRENT version and return the snapshot that serves it; undone if publishing fails."""
    bundle = snap.bundle
    with lock:
        removed = catalog.remove_items(bundle, snap.index, ids, text_index=snap.text_index)
    try:
        path = persist_update(
            store,
            bundle,
            snap.index,
            note={"op": "remove", "removed": len(removed.rows), "by": "service"},
            text_index=snap.text_index,
        )
    except BaseException:
        with lock:
            removed.undo()
        raise
    bundle.path, bundle.manifest = path, read_manifest(path)
    order, scores = popular_rows(bundle, snap.index.removed)
    return replace(
        snap,
        version=bundle.version,
        popular=order,
        popular_scores=scores,
        attrs=attribute_table(bundle, snap.index.removed),
    )
