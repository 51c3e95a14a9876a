"""Catalog changes on the live service (upsert, attribute edit, delete): the change applied
under the model lock, published as the new CURRENT version, and the snapshot that serves it.

The validation and the LM encoding happen before (``model_store.catalog.changes.validate_items`` and
``encode_items``, outside any lock); only the cheap in-place part holds the lock, so
requests wait for microseconds, not for the language model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from app.snapshot import Snapshot, attribute_table, popular_rows
from indexer import catalog
from indexer.publish import persist_update
from model_store.bundle.io import read_manifest
from model_store.catalog.changes import Change


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
