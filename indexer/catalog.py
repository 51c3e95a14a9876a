"""The one catalog-update path: validate, encode, apply (with undo) and remove items.

Both ``fusionrec index add|remove`` and the service's ``POST /v1/items`` go through here,
in three steps with different costs:

1. ``validate_items`` — pure: each item needs a non-empty ``item_id`` (unique in the update)
   and only the catalog's text columns, as strings or null; fields an edit leaves out keep
   their old value; a new item needs some text. ``InvalidInputError`` names the item and
   field.
2. ``encode_change`` — runs the bundle's LM on the merged texts (slow; no lock needed).
3. ``apply_change`` — cheap, in place: the model's catalog buffers (new items take the text
   path only: ``has_id = 0``, popularity 0), ``bundle.items``/``item_ids``, the item
   vectors in the index and the search index. It returns an ``Applied`` whose ``undo``
   puts everything back, for a publish that fails afterwards.

``remove_items`` takes items out of the index (their catalog rows stay, marked removed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from indexer.encode import encode_new_items
from indexer.index import ItemIndex
from model_store.bundle import Bundle
from model_store.errors import InvalidInputError, NotFoundError

MAX_ID = 256


def validate_items(bundle: Bundle, items: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """The complete records (item_id + every text column) of an upsert; raises
    InvalidInputError naming the first bad item and field."""
    columns = bundle.text_columns
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    seen: set[str] = set()
    records: list[dict[str, object]] = []
    for n, raw in enumerate(items):
        item_id = raw.get("item_id")
        if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > MAX_ID:
            raise InvalidInputError(
                f"items[{n}].item_id: a non-empty string of at most {MAX_ID} characters "
                f"is required (got {item_id!r})"
            )
        if item_id in seen:
            raise InvalidInputError(f"items[{n}].item_id: {item_id!r} appears twice")
        seen.add(item_id)
        bad = sorted(set(raw) - {"item_id", *columns})
        if bad:
            raise InvalidInputError(
                f"items[{n}]: unknown field(s) {bad}; valid text fields of this catalog: {columns}"
            )
        record: dict[str, object] = {"item_id": item_id}
        old = row_of.get(item_id)
        for c in columns:
            if c in raw:
                value = raw[c]
                if value is not None and not isinstance(value, str):
                    raise InvalidInputError(
                        f"items[{n}].{c}: must be a string or null, got {type(value).__name__}"
                    )
                record[c] = value
            elif old is not None:  # an edit keeps the fields it does not name
                record[c] = bundle.items.iloc[old][c]
            else:
                record[c] = None
        if not any(isinstance(record[c], str) and str(record[c]).strip() for c in columns):
            raise InvalidInputError(
                f"items[{n}] ({item_id!r}) has no text: give at least one of {columns}"
            )
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["item_id", *columns])


@dataclass
class Change:
    """A validated upsert with its text embeddings, ready to apply."""

    records: pd.DataFrame  # item_id + text columns, one row per item
    text_emb: np.ndarray  # (M, T), the records' LM embeddings


def encode_change(bundle: Bundle, records: pd.DataFrame, *, device: str = "auto") -> Change:
    rows = [{str(c): v for c, v in r.items()} for r in records.to_dict("records")]
    return Change(records, encode_new_items(bundle, rows, device=device))


@dataclass
class Applied:
    """What ``apply_change`` did, and how to take it back."""

    bundle: Bundle
    index: ItemIndex
    text_index: ItemIndex | None
    added: list[str]
    updated: list[str]
    rows: np.ndarray  # catalog row of each record (updated first, then added)
    vectors: np.ndarray  # their new retrieval vectors (R, D)
    _n_before: int
    _old_text: torch.Tensor  # text embeddings the updated rows had
    _old_vectors: np.ndarray
    _old_items: pd.DataFrame
    _old_ids: list[str]

    def undo(self) -> None:
        """Restore the bundle and the indexes as they were before the change."""
        model, n0 = self.bundle.model, self._n_before
        upd = self.rows[: len(self.updated)]
        new = self.rows[len(self.updated) :]
        self.index.remove(new, mark_removed=False)
        if self.text_index is not None:
            self.text_index.remove(new, mark_removed=False)
        with torch.no_grad():
            if len(upd):
                model.replace_text(torch.from_numpy(upd + 1), self._old_text)
                self.index.add(self._old_vectors, upd)
                if self.text_index is not None:
                    self.text_index.add(self._old_text.float().cpu().numpy(), upd)
            model.truncate_catalog(n0)
        self.bundle.item_ids, self.bundle.items = self._old_ids, self._old_items


def apply_change(
    bundle: Bundle, index: ItemIndex, change: Change, *, text_index: ItemIndex | None = None
) -> Applied:
    """Add the new items and replace the edited ones, in the bundle and the indexes."""
    model = bundle.model
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    ids = [str(i) for i in change.records["item_id"]]
    upd = [(n, row_of[i]) for n, i in enumerate(ids) if i in row_of]
    new = [n for n, i in enumerate(ids) if i not in row_of]
    n0 = len(bundle.item_ids)
    upd_rows = np.asarray([r for _, r in upd], dtype=np.int64)
    new_rows = np.arange(n0, n0 + len(new), dtype=np.int64)
    dev = model.text_emb.device
    emb = torch.from_numpy(change.text_emb)
    old_text = model.text_emb[torch.from_numpy(upd_rows + 1).to(dev)].clone()
    with torch.no_grad():
        old_vectors = model.item_vectors(torch.from_numpy(upd_rows + 1).to(dev)).float().cpu()
    old_items, old_ids = bundle.items, bundle.item_ids
    items = bundle.items.copy()
    cols = [c for c in change.records.columns if c != "item_id"]
    for n, r in upd:
        items.loc[items.index[r], cols] = change.records.iloc[n][cols].to_numpy()
    with torch.no_grad():
        if upd:
            model.replace_text(torch.from_numpy(upd_rows + 1), emb[[n for n, _ in upd]])
        if new:
            model.extend_catalog(emb[new])
    bundle.items = pd.concat([items, change.records.iloc[new]], ignore_index=True)
    bundle.item_ids = old_ids + [ids[n] for n in new]
    rows = np.concatenate([upd_rows, new_rows])
    with torch.no_grad():
        vectors = model.item_vectors(torch.from_numpy(rows + 1).to(dev)).float().cpu().numpy()
    index.add(vectors, rows)
    if text_index is not None:
        text_index.add(emb[[n for n, _ in upd] + new].numpy(), rows)
    return Applied(
        bundle,
        index,
        text_index,
        added=[ids[n] for n in new],
        updated=[ids[n] for n, _ in upd],
        rows=rows,
        vectors=vectors,
        _n_before=n0,
        _old_text=old_text,
        _old_vectors=old_vectors.numpy(),
        _old_items=old_items,
        _old_ids=old_ids,
    )


def upsert_items(
    bundle: Bundle,
    index: ItemIndex,
    items: Sequence[Mapping[str, object]],
    *,
    device: str = "auto",
    text_index: ItemIndex | None = None,
) -> Applied:
    """Validate, encode and apply in one call (the CLI's path); nothing changes on error."""
    change = encode_change(bundle, validate_items(bundle, items), device=device)
    return apply_change(bundle, index, change, text_index=text_index)


def remove_items(
    bundle: Bundle, index: ItemIndex, ids: Sequence[str], *, text_index: ItemIndex | None = None
) -> list[int]:
    """Remove items from the index and mark them removed; their catalog rows stay.

    Unknown ids raise NotFoundError (naming them) and nothing changes. Returns the rows.
    """
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    unknown = [i for i in ids if str(i) not in row_of]
    if unknown:
        raise NotFoundError(f"unknown item id(s) {unknown[:10]}; nothing was removed")
    rows = [row_of[str(i)] for i in ids]
    index.remove(rows)
    if text_index is not None:
        text_index.remove(rows)
    return rows
