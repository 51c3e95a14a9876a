"""The catalog update of an indexed bundle: ``model_store.catalog.changes`` plus the indexes.

Both ``fusionrec index add|remove`` and the service's ``POST /v1/items``, ``PATCH`` and
``DELETE /v1/items/{id}`` go through here:
``model_store.catalog.changes.prepare_change`` (validate and encode, slow, no lock), then
``apply_change`` (cheap, in place: the bundle's catalog and model, the item vectors in the
index and the search index), which returns an ``Applied`` whose ``undo`` puts everything
back for a publish that fails afterwards. ``remove_items`` takes items out of the index
(their catalog rows stay, marked removed) and returns a ``Removed`` that can be undone too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.index import ItemIndex
from model_store.bundle.io import Bundle
from model_store.catalog.changes import BundleChange, Change, apply_to_bundle, prepare_change
from model_store.errors import NotFoundError


@dataclass
class Applied:
    """What ``apply_change`` did, and how to take it back."""

    change: BundleChange
    index: ItemIndex
    text_index: ItemIndex | None
    vectors: np.ndarray  # the new retrieval vectors of ``change.rows`` (R, D)
    _old_vectors: np.ndarray

    @property
    def added(self) -> list[str]:
        return self.change.added

    @property
    def updated(self) -> list[str]:
        return self.change.updated

    @property
    def rows(self) -> np.ndarray:
        return self.change.rows

    def undo(self) -> None:
        """Restore the bundle and the indexes as they were before the change."""
        upd, new = self.change.updated_rows, self.change.added_rows
        self.index.remove(new, mark_removed=False)
        if self.text_index is not None:
            self.text_index.remove(new, mark_removed=False)
        if len(upd):
            self.index.add(self._old_vectors, upd)
            if self.text_index is not None:
                self.text_index.add(self.change.old_text.float().cpu().numpy(), upd)
        self.change.undo()


def apply_change(
    bundle: Bundle, index: ItemIndex, change: Change, *, text_index: ItemIndex | None = None
) -> Applied:
    """Add the new items and replace the edited ones, in the bundle and the indexes."""
    model = bundle.model
    dev = model.text_emb.device
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    ids = change.records["item_id"].astype(str)
    old_rows = np.asarray([row_of[i] for i in ids if i in row_of], dtype=np.int64)
    with torch.no_grad():
        old_vectors = model.item_vectors(torch.from_numpy(old_rows + 1).to(dev)).float().cpu()
        done = apply_to_bundle(bundle, change)
        rows = torch.from_numpy(done.rows + 1).to(dev)
        vectors = model.item_vectors(rows).float().cpu().numpy()
        text = model.text_emb[rows].float().cpu().numpy()
    index.add(vectors, done.rows)
    if text_index is not None:
        text_index.add(text, done.rows)
    return Applied(done, index, text_index, vectors, old_vectors.numpy())


def upsert_items(
    bundle: Bundle,
    index: ItemIndex,
    items: Sequence[Mapping[str, object]],
    *,
    device: str = "auto",
    text_index: ItemIndex | None = None,
) -> Applied:
    """Validate, encode and apply in one call (the CLI's path); nothing changes on error."""
    change = prepare_change(bundle, items, device=device)
    return apply_change(bundle, index, change, text_index=text_index)


@dataclass
class Removed:
    """What ``remove_items`` did, and how to take it back (a publish that fails)."""

    rows: list[int]
    index: ItemIndex
    text_index: ItemIndex | None
    _vectors: np.ndarray
    _text: np.ndarray

    def undo(self) -> None:
        r = np.asarray(self.rows, dtype=np.int64)
        self.index.add(self._vectors, r)
        if self.text_index is not None:
            self.text_index.add(self._text, r)


def remove_items(
    bundle: Bundle, index: ItemIndex, ids: Sequence[str], *, text_index: ItemIndex | None = None
) -> Removed:
    """Remove items from the index and mark them removed; their catalog rows stay.

    Unknown ids raise NotFoundError (naming them) and nothing changes.
    """
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    unknown = [i for i in ids if str(i) not in row_of]
    if unknown:
        raise NotFoundError(f"unknown item id(s) {unknown[:10]}; nothing was removed")
    rows = list(dict.fromkeys(row_of[str(i)] for i in ids))
    model = bundle.model
    with torch.no_grad():
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64) + 1).to(model.text_emb.device)
        vectors = model.item_vectors(idx).float().cpu().numpy()
        text = model.text_emb[idx].float().cpu().numpy()
    index.remove(rows)
    if text_index is not None:
        text_index.remove(rows)
    return Removed(rows, index, text_index, vectors, text)
