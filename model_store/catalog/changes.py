"""Catalog changes of a bundle, the one path for every item upsert: validate, encode, apply.

The service (``POST /v1/items``), the CLI (``fusionrec index add``) and the evaluation of
items unseen in training (``model_store.evaluation.protocols``) all add items this way, so an
item is measured exactly as it is served:

1. ``validate_items`` — pure: each item needs a non-empty ``item_id`` (unique in the update)
   and only the catalog's text columns, as non-blank strings; fields an edit leaves out keep
   their old value; a new item needs some text. ``InvalidInputError`` names item and field.
2. ``encode_items`` — the bundle's own LM on the merged texts (slow; no lock needed).
3. ``apply_to_bundle`` — cheap, in place: the model's catalog buffers (a new item has no
   trained ID: ``has_id = 0``, popularity 0, it takes the text path), ``bundle.items`` and
   ``bundle.item_ids``. The returned ``BundleChange`` knows the rows and can ``undo``.

``indexer.catalog`` adds the index on top (item vectors and the search index).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from model_store.bundle.io import Bundle
from model_store.data.attributes import check_value, coerce_column
from model_store.data.dataset import format_item_text
from model_store.errors import ConfigError, InvalidInputError
from model_store.text.encoder import text_encoder_for

MAX_ID = 256


def validate_items(bundle: Bundle, items: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """The complete records (item_id + every text column + every attribute) of an upsert;
    raises InvalidInputError naming the first bad item and field."""
    columns = bundle.text_columns
    attrs = {k: v for k, v in bundle.attribute_types.items() if k not in columns}
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
        bad = sorted(set(raw) - {"item_id", *columns, *attrs})
        if bad:
            raise InvalidInputError(
                f"items[{n}]: unknown field(s) {bad}; valid text fields of this catalog: "
                f"{columns}; attributes: {attrs}"
            )
        record: dict[str, object] = {"item_id": item_id}
        old = row_of.get(item_id)
        for c in columns:
            if c in raw:
                value = raw[c]
                if not isinstance(value, str) or not value.strip():
                    raise InvalidInputError(
                        f"items[{n}].{c}: a text field, when given, must be a non-blank "
                        f"string, got {value!r:.40}"
                    )
                record[c] = value
            elif old is not None:  # an edit keeps the fields it does not name
                record[c] = bundle.items.iloc[old][c]
            else:
                record[c] = None
        for c, kind in attrs.items():
            if c in raw:
                value = raw[c]
                record[c] = None if value is None else check_value(f"items[{n}].{c}", kind, value)
            elif old is not None and c in bundle.items.columns:
                value = bundle.items.iloc[old][c]
                record[c] = None if pd.isna(value) else value
            else:
                record[c] = None
        if not any(isinstance(record[c], str) and str(record[c]).strip() for c in columns):
            raise InvalidInputError(
                f"items[{n}] ({item_id!r}) has no text: give at least one of {columns}"
            )
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["item_id", *columns, *attrs])


def current_text(bundle: Bundle, records: pd.DataFrame) -> np.ndarray:
    """The text embeddings the (existing) items of ``records`` have now: an edit of
    attributes only keeps its text, so it needs no LM work."""
    row_of = bundle.index_of()
    idx = torch.as_tensor([row_of[str(i)] for i in records["item_id"]], dtype=torch.long)
    emb = bundle.model.text_emb[idx.to(bundle.model.text_emb.device)]
    return np.ascontiguousarray(emb.float().cpu().numpy())


def encode_items(
    bundle: Bundle,
    records: pd.DataFrame,
    *,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """LM text embeddings (M, T) of validated records, formatted like the training text."""
    columns = bundle.text_columns
    rows = [{str(k): v for k, v in r.items()} for r in records.to_dict("records")]
    texts = [format_item_text(r, columns) for r in rows]
    encoder = text_encoder_for(bundle, device)
    emb = encoder.encode(texts, batch_size=bundle.config.text.batch_size, progress=progress)
    if emb.shape[1] != bundle.model.text_emb.shape[1]:
        raise ConfigError(
            f"text model {encoder.name!r} gives {emb.shape[1]}-dim embeddings, the bundle "
            f"holds {bundle.model.text_emb.shape[1]}-dim ones"
        )
    return emb


@dataclass
class Change:
    """A validated upsert with its text embeddings, ready to apply."""

    records: pd.DataFrame  # item_id + text columns, one row per item
    text_emb: np.ndarray  # (M, T), the records' LM embeddings


def prepare_change(
    bundle: Bundle, items: Sequence[Mapping[str, object]], *, device: str = "auto"
) -> Change:
    """Validate and encode in one call; nothing is changed."""
    records = validate_items(bundle, items)
    return Change(records, encode_items(bundle, records, device=device))


@dataclass
class BundleChange:
    """What ``apply_to_bundle`` did, and how to take it back."""

    bundle: Bundle
    added: list[str]
    updated: list[str]
    rows: np.ndarray  # catalog row of each record: the updated ones first, then the added
    old_text: torch.Tensor  # the text embeddings the updated rows had
    _n_before: int
    _old_items: pd.DataFrame
    _old_ids: list[str]

    @property
    def updated_rows(self) -> np.ndarray:
        return self.rows[: len(self.updated)]

    @property
    def added_rows(self) -> np.ndarray:
        return self.rows[len(self.updated) :]

    def undo(self) -> None:
        model = self.bundle.model
        with torch.no_grad():
            if len(self.updated):
                model.replace_text(torch.from_numpy(self.updated_rows + 1), self.old_text)
            model.truncate_catalog(self._n_before)
        self.bundle.item_ids, self.bundle.items = self._old_ids, self._old_items


def apply_to_bundle(bundle: Bundle, change: Change) -> BundleChange:
    """Add the new items and replace the edited ones in the bundle's catalog and model."""
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
    old_items, old_ids = bundle.items, bundle.item_ids
    items = bundle.items.copy()
    cols = [c for c in change.records.columns if c != "item_id"]
    types = bundle.attribute_types
    for c in cols:
        if c not in items.columns:  # an attribute set for the first time (``available``)
            items[c] = pd.Series([None] * len(items), dtype=object)
        elif c not in bundle.text_columns:  # stored form: no bool dtype that None would upcast
            items[c] = coerce_column(items[c], types[c])
    for n, r in upd:
        items.loc[items.index[r], cols] = change.records.iloc[n][cols].to_numpy()
    with torch.no_grad():
        if upd:
            model.replace_text(torch.from_numpy(upd_rows + 1), emb[[n for n, _ in upd]])
        if new:
            model.extend_catalog(emb[new])
    merged = pd.concat([items, change.records.iloc[new]], ignore_index=True)
    for c, kind in types.items():
        if c in merged.columns and c not in bundle.text_columns:
            merged[c] = coerce_column(merged[c], kind)
    bundle.items = merged
    bundle.item_ids = old_ids + [ids[n] for n in new]
    return BundleChange(
        bundle,
        added=[ids[n] for n in new],
        updated=[ids[n] for n, _ in upd],
        rows=np.concatenate([upd_rows, new_rows]),
        old_text=old_text,
        _n_before=n0,
        _old_items=old_items,
        _old_ids=old_ids,
    )
