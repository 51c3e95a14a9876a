"""Catalog writes as rows: validated, encoded item changes → :class:`ItemWrite` for the table.

The service (``POST/PATCH/DELETE /v1/items``) and the CLI (``fusionrec index add|remove``)
share these: :func:`upsert_writes` turns validated records (``changes.validate_items``) and
their text embeddings (``changes.encode_items``, the only slow part) into writes;
:func:`patch_writes` does an attribute-only edit (no LM work); :func:`base_row` is an item
as a bundle holds it (the base a first change builds on). :func:`record_frame` is the way
back: rows of the table as the records ``indexer.catalog.apply_change`` applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.bundle.io import Bundle, load_bundle
from model_store.catalog.changes import encode_items, validate_items
from model_store.catalog.table import CatalogStore, ItemRow, ItemWrite
from model_store.errors import NotFoundError


def _plain(value: object) -> object:
    """A value the JSON column can hold: numpy scalars as Python ones, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return None if value is pd.NA or value is pd.NaT else value


def attribute_names(bundle: Bundle) -> list[str]:
    return [c for c in bundle.attribute_types if c not in bundle.text_columns]


def base_row(bundle: Bundle, item_id: str, *, removed: set[int] | None = None) -> ItemRow | None:
    """The item as ``bundle`` holds it (version 0), None when it has no live row."""
    row = {item: k for k, item in enumerate(bundle.item_ids)}.get(item_id)
    if row is None or (removed is not None and row in removed):
        return None
    record = bundle.items.iloc[row]
    texts = {c: _plain(record[c]) for c in bundle.text_columns if c in record.index}
    attrs = {c: _plain(record[c]) for c in attribute_names(bundle) if c in record.index}
    vec = bundle.model.text_emb[row + 1].float().cpu().numpy()
    available = attrs.get("available")
    return ItemRow(
        item_id=item_id,
        texts={k: (None if v is None else str(v)) for k, v in texts.items()},
        attributes={k: v for k, v in attrs.items() if v is not None},
        available=True if available is None else bool(available),
        text_vec=vec,
        version=0,
        seq=0,
        deleted=False,
    )


def upsert_writes(
    bundle: Bundle,
    records: pd.DataFrame,
    emb: np.ndarray,
    raw: Sequence[Mapping[str, object]],
    *,
    removed: set[int] | None = None,
    if_match: int | None = None,
) -> list[ItemWrite]:
    """Writes of validated ``records`` with their new text embeddings: every text field (the
    vector encodes them all) and the attributes the request named (``raw``)."""
    attrs = attribute_names(bundle)
    out = []
    for n, (rec, given) in enumerate(zip(records.to_dict("records"), raw, strict=True)):
        item_id = str(rec["item_id"])
        out.append(
            ItemWrite(
                item_id=item_id,
                texts={c: _text(rec.get(c)) for c in bundle.text_columns},
                attributes={c: _plain(rec.get(c)) for c in attrs if c in given},
                text_vec=np.asarray(emb[n], dtype=np.float32),
                base=base_row(bundle, item_id, removed=removed),
                if_match=if_match,
            )
        )
    return out


def _text(value: object) -> str | None:
    value = _plain(value)
    return None if value is None else str(value)


def patch_writes(
    bundle: Bundle,
    item_id: str,
    values: Mapping[str, object],
    *,
    removed: set[int] | None = None,
    if_match: int | None = None,
) -> list[ItemWrite]:
    """An attribute-only edit (validated by ``validate_items``): no new vector."""
    records = validate_items(bundle, [{"item_id": item_id, **values}])
    rec = records.to_dict("records")[0]
    return [
        ItemWrite(
            item_id=item_id,
            attributes={c: _plain(rec.get(c)) for c in values},
            base=base_row(bundle, item_id, removed=removed),
            if_match=if_match,
        )
    ]


def delete_write(
    bundle: Bundle, item_id: str, *, removed: set[int] | None = None, if_match: int | None = None
) -> ItemWrite:
    return ItemWrite(
        item_id, delete=True, base=base_row(bundle, item_id, removed=removed), if_match=if_match
    )


def record_frame(bundle: Bundle, rows: Sequence[ItemRow]) -> pd.DataFrame:
    """Rows of the table as validated records of ``bundle``'s columns (unknown fields of
    an older catalog are left out; a missing one is None)."""
    columns, attrs = bundle.text_columns, attribute_names(bundle)
    records = [
        {
            "item_id": r.item_id,
            **{c: r.texts.get(c) for c in columns},
            **{c: r.attributes.get(c) for c in attrs},
        }
        for r in rows
    ]
    return pd.DataFrame.from_records(records, columns=["item_id", *columns, *attrs])


def row_vectors(
    bundle: Bundle, rows: Sequence[ItemRow], records: pd.DataFrame, *, device: str = "auto"
) -> np.ndarray:
    """The rows' text vectors (M, T); those missing or of another text model's width are
    encoded here (a bundle with another LM than the replica that wrote them)."""
    dim = int(bundle.model.text_emb.shape[1])
    out = np.zeros((len(rows), dim), np.float32)
    stale = [n for n, r in enumerate(rows) if r.text_vec is None or r.text_vec.shape[0] != dim]
    for n, r in enumerate(rows):
        if n not in stale:
            assert r.text_vec is not None
            out[n] = r.text_vec
    if stale:
        out[stale] = encode_items(bundle, records.iloc[stale], device=device)
    return out


# ---- the CLI: `fusionrec index add|remove` ------------------------------------------------


def default_url(store: Path) -> str:
    """The store's embedded database (the service's default event log and catalog)."""
    return f"sqlite:///{Path(store).resolve() / 'events.db'}"


def add_items(
    store: Path, url: str | None, items: Sequence[Mapping[str, object]], *, device: str = "auto"
) -> tuple[int, list[ItemRow]]:
    """Validate and encode ``items`` against CURRENT, write them as one change; the new
    sequence number and the rows. Replicas apply them live."""
    bundle = load_bundle(store, None)
    records = validate_items(bundle, items)
    emb = encode_items(bundle, records, device=device)
    writes = upsert_writes(bundle, records, emb, items)
    return CatalogStore(url or default_url(store)).write(writes)


def remove_items(store: Path, url: str | None, ids: Sequence[str]) -> tuple[int, list[ItemRow]]:
    """Delete ``ids`` as one change (unknown ids: NotFoundError naming them, nothing done)."""
    bundle = load_bundle(store, None)
    db = CatalogStore(url or default_url(store))
    known = db.get(ids)
    unknown = [
        i
        for i in ids
        if (i not in known and base_row(bundle, i) is None) or (i in known and known[i].deleted)
    ]
    if unknown:
        raise NotFoundError(f"unknown item id(s) {unknown[:10]}; nothing was removed")
    return db.write([delete_write(bundle, i) for i in dict.fromkeys(ids)])
