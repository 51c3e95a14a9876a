"""The catalog table's changes applied to a live snapshot, in place, on every replica.

:func:`apply_rows` takes the rows changed after the snapshot's ``catalog_seq``
(``model_store.catalog.table``) and applies them under the model lock: upserts through
``indexer.catalog.apply_change`` (the item's stored text vector — no LM work — into the
model's catalog buffers, FAISS add by id for both indexes, the lexical index), deletions
through ``indexer.catalog.remove_items`` (FAISS remove by id, the row marked removed); the
attribute table (masks, ``available``) is rebuilt from the new catalog. No bundle is
written: the bundle stays the model snapshot, the table is the catalog after it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.core.snapshot import Snapshot, attribute_table, popular_rows
from indexer import catalog
from model_store.catalog.changes import Change
from model_store.catalog.table import CatalogStore, ItemRow
from model_store.catalog.writes import attribute_names, record_frame, row_vectors
from model_store.data.attributes import coerce_column


def _upsert(
    snap: Snapshot, rows: Sequence[ItemRow], *, lock: threading.Lock, device: str
) -> Snapshot:
    bundle = snap.bundle
    records = record_frame(bundle, rows)
    emb = row_vectors(bundle, rows, records, device=device)
    revived = any(snap.row_of.get(r.item_id, -1) in snap.index.removed for r in rows)
    with lock:
        # the model's serving tables follow the change row by row; the traces take them as
        # inputs (model_store.model.serving): nothing is re-traced
        applied = catalog.apply_change(
            bundle, snap.index, Change(records, emb), text_index=snap.text_index
        )
    n_new = len(applied.added)
    item_vecs = np.concatenate(
        [snap.item_vecs, np.zeros((n_new, snap.item_vecs.shape[1]), np.float32)]
    )
    item_vecs[applied.rows] = applied.vectors
    new_rows = applied.rows[len(applied.updated) :]
    row_of = dict(snap.row_of)
    row_of.update({bundle.item_ids[int(r)]: int(r) for r in new_rows})
    at = np.asarray([row_of[r.item_id] for r in rows], dtype=np.int64)
    with lock:
        snap.lexical.upsert(at, records)
    if revived:  # a deleted item is back: its place in the popularity order too
        popular, scores = popular_rows(bundle, snap.index.removed)
    else:
        popular = np.concatenate([snap.popular, new_rows])
        scores = np.concatenate([snap.popular_scores, np.zeros(n_new, np.float32)])
    return replace(snap, row_of=row_of, item_vecs=item_vecs, popular=popular, popular_scores=scores)


def _same_text(snap: Snapshot, r: ItemRow) -> bool:
    """Whether ``r`` is a live item whose text is what the snapshot has (an attribute edit:
    ``available``, a price): nothing of the model or the indexes changes."""
    row = snap.live(r.item_id)
    if row is None:
        return False
    current = snap.bundle.items.iloc[row]
    return all(
        r.texts.get(c) == (None if pd.isna(current[c]) else str(current[c]))
        for c in snap.bundle.text_columns
    )


def _set_attributes(snap: Snapshot, rows: Sequence[ItemRow], *, lock: threading.Lock) -> None:
    """Attribute edits in place in the catalog table (O(changed rows); no LM, no FAISS, no
    re-trace); the attribute table is rebuilt by the caller."""
    bundle = snap.bundle
    types = bundle.attribute_types
    with lock:
        items = bundle.items
        for c in attribute_names(bundle):
            if c not in items.columns:  # set for the first time (``available``)
                items[c] = pd.Series([None] * len(items), dtype=object, index=items.index)
            elif types[c] == "bool" and items[c].dtype != object:  # None must fit
                items[c] = coerce_column(items[c], types[c])
            for r in rows:
                value: Any = r.attributes.get(c)
                items.at[items.index[snap.row_of[r.item_id]], c] = value


def warm(snap: Snapshot, *, lock: threading.Lock) -> None:
    """The serving tables rebuilt for the snapshot's catalog where a change could not be
    followed row by row (an edited text of a trained item), off the write's path; a request
    arriving first builds them itself. Cheap (cache hits) otherwise: no trace is rebuilt."""
    with lock, torch.no_grad():
        model = snap.bundle.model
        model.serving_encoder()
        model.serving_reranker()


def _delete(snap: Snapshot, ids: Sequence[str], *, lock: threading.Lock) -> Snapshot:
    with lock:
        catalog.remove_items(snap.bundle, snap.index, ids, text_index=snap.text_index)
    popular, scores = popular_rows(snap.bundle, snap.index.removed)
    return replace(snap, popular=popular, popular_scores=scores)


def apply_rows(
    snap: Snapshot, rows: Sequence[ItemRow], seq: int, *, lock: threading.Lock, device: str
) -> Snapshot:
    """``snap`` with ``rows`` (the latest row of each item changed up to ``seq``) applied;
    the returned snapshot serves them (one reference swap by the caller)."""
    attrs = [r for r in rows if not r.deleted and _same_text(snap, r)]
    edits = {r.item_id for r in attrs}
    live = [r for r in rows if not r.deleted and r.item_id not in edits]
    gone = [r.item_id for r in rows if r.deleted and snap.live(r.item_id) is not None]
    out = snap
    if attrs:
        _set_attributes(snap, attrs, lock=lock)
    if live:
        out = _upsert(out, live, lock=lock, device=device)
    if gone:
        out = _delete(out, gone, lock=lock)
    versions = dict(snap.item_versions)
    versions.update({r.item_id: r.version for r in rows})
    return replace(
        out,
        attrs=attribute_table(out.bundle, out.index.removed) if rows else out.attrs,
        catalog_seq=seq,
        item_versions=versions,
    )


def catch_up(
    snap: Snapshot,
    store: CatalogStore,
    *,
    lock: threading.Lock,
    device: str,
    head: int | None = None,
) -> Snapshot:
    """``snap`` with every change after its sequence up to the head (read unless given)."""
    head = store.head() if head is None else head
    if head <= snap.catalog_seq:
        return snap
    rows = store.rows_after(snap.catalog_seq, head)
    return apply_rows(snap, rows, head, lock=lock, device=device)
