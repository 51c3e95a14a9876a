"""``fusionrec catalog import|export``: the catalog table in bulk, from and to an items file.

**Import** (``--data DIR`` with ``items.csv`` or ``items.parquet``): every row is read and
typed by the bundle's attribute types, validated (``changes.validate_items``), encoded in
batches with progress, and written as ONE change of the table — a bad row is named by
file, row (1-based data row) and field and nothing is written; a failed write writes
nothing either (one transaction).

**Export** (``--out DIR``): the catalog as replicas serve it — CURRENT's items with the
table's rows after its sequence applied, deleted items left out — as ``items.csv``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from model_store.bundle.io import Bundle, load_bundle
from model_store.catalog.changes import encode_items, validate_items
from model_store.catalog.table import CatalogStore, ItemRow
from model_store.catalog.writes import default_url, upsert_writes
from model_store.data.attributes import AttrType
from model_store.data.dataset import read_table
from model_store.errors import DataError, InvalidInputError
from model_store.ids import id_problem

_ITEM = re.compile(r"items\[(\d+)\]")


def _typed(where: str, kind: AttrType, value: object) -> object:
    """A file's cell as the attribute type holds it; DataError naming ``where``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "number":
        try:
            number = float(str(value))
        except ValueError:
            raise DataError(f"{where}: a number is required, got {str(value)[:40]!r}") from None
        if not math.isfinite(number):
            raise DataError(f"{where}: a finite number is required, got {value!r}")
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "false", "0", "no"):
            return text in ("true", "1", "yes")
        raise DataError(f"{where}: true or false is required, got {str(value)[:40]!r}")
    return str(value)


def read_rows(bundle: Bundle, data: Path) -> tuple[list[dict[str, object]], Path]:
    """The items file of ``data`` as upsert items typed for ``bundle``, and its path."""
    frame, found = read_table(Path(data) / "items")
    if "item_id" not in frame.columns:
        raise DataError(f"{found}: missing column 'item_id'; columns: {list(frame.columns)}")
    types = bundle.attribute_types
    rows: list[dict[str, object]] = []
    for n, record in enumerate(frame.to_dict("records")):
        row: dict[str, object] = {}
        for col, value in record.items():
            name = str(col)
            kind = types.get(name, "text")
            row[name] = _typed(f"{found}, row {n + 1}, field {name}", kind, value)
        problem = id_problem(row["item_id"])
        if problem is not None:
            raise DataError(f"{found}, row {n + 1}, field item_id: {problem}")
        rows.append(row)
    return rows, found


def import_items(
    store: Path,
    url: str | None,
    data: Path,
    *,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Upsert every item of ``data``'s items file as one change; (seq, items)."""
    bundle = load_bundle(store, None)
    rows, found = read_rows(bundle, data)
    if not rows:
        raise DataError(f"{found}: no rows")
    try:
        records = validate_items(bundle, rows)
    except InvalidInputError as exc:  # items[n].field → file, row n+1, field
        message = _ITEM.sub(lambda m: f"{found}, row {int(m.group(1)) + 1}", str(exc))
        raise DataError(message) from exc
    total = len(records)
    emb = encode_items(
        bundle,
        records,
        device=device,
        progress=None if progress is None else _counting(progress, total),
    )
    seq, written = CatalogStore(url or default_url(store)).write(
        upsert_writes(bundle, records, emb, rows)
    )
    return seq, len(written)


def _counting(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    return step


def served_catalog(bundle: Bundle, rows: list[ItemRow]) -> pd.DataFrame:
    """``bundle``'s items with ``rows`` (the table after its sequence) over them."""
    columns = [c for c in bundle.items.columns]
    items = bundle.items.set_index("item_id", drop=False)
    changed = {r.item_id: r for r in rows}
    kept = items[~items.index.isin(list(changed))]
    fresh = [
        {"item_id": r.item_id, **r.texts, **r.attributes, "available": r.available}
        for r in rows
        if not r.deleted
    ]
    extra = pd.DataFrame.from_records(fresh) if fresh else pd.DataFrame(columns=columns)
    out = pd.concat([kept.reset_index(drop=True), extra], ignore_index=True)
    return out[[*columns, *[c for c in out.columns if c not in columns]]]


def export_items(store: Path, url: str | None, out: Path) -> tuple[Path, int, int]:
    """Write the served catalog to ``out/items.csv``; (path, items, catalog seq)."""
    bundle = load_bundle(store, None)
    table = CatalogStore(url or default_url(store))
    head = table.head()
    rows = table.rows_after(bundle.manifest.catalog_seq, head)
    catalog = served_catalog(bundle, rows)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "items.csv"
    catalog.to_csv(path, index=False)
    return path, len(catalog), max(head, bundle.manifest.catalog_seq)
