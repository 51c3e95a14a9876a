"""Item attributes: typed columns of the catalog, and the table of one snapshot's columns
with the cached masks of filters over them (the filters themselves:
``model_store.data.filters``).

**Attributes.** Every column of the item table is filterable. Its type is declared:

* the text columns (the LM's input: title, genres, …) are ``text``;
* other columns are declared by the dataset's column type when the bundle is trained
  (``manifest.data.attributes``: numeric → ``number``, boolean → ``bool``, strings that are
  not text columns → ``text``);
* ``available`` is always a ``bool`` attribute, true where it was never set. An item with
  ``available = false`` is *hidden*: no list endpoint returns it (``AttributeTable.visible``).

Masks are computed with vectorised pandas/numpy over the whole catalog and cached per
filter in an LRU per snapshot bounded by bytes (``MASK_CACHE_BYTES``: each mask plus the
memory of its filter, the key), so a storefront's repeated filters cost a lookup and
hostile distinct ones cannot grow the process.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from model_store.data.filters import (
    MAX_CONDITIONS,
    MAX_FILTER_BYTES,
    MAX_IN,
    MAX_NAME_CHARS,
    MAX_VALUE_CHARS,
    OPS,
    AttrType,
    Condition,
    Filter,
    check_bounds,
    check_value,
    condition_mask,
    filter_bytes,
    ops_of,
    parse_filter,
)
from model_store.errors import InvalidInputError

__all__ = [
    "MAX_CONDITIONS",
    "MAX_FILTER_BYTES",
    "MAX_IN",
    "MAX_NAME_CHARS",
    "MAX_VALUE_CHARS",
    "OPS",
    "AttrType",
    "AttributeTable",
    "Condition",
    "Filter",
    "attribute_types",
    "check_bounds",
    "check_fields",
    "check_value",
    "coerce_column",
    "declared_types",
    "ops_of",
    "parse_filter",
]

AVAILABLE = "available"
MASK_CACHE_BYTES = 64 * 1024 * 1024  # masks and their keys one snapshot keeps


def declared_types(items: pd.DataFrame, text_columns: Sequence[str]) -> dict[str, AttrType]:
    """The attribute types a dataset's item table declares by its column types (every
    column but ``item_id`` and the text columns)."""
    out: dict[str, AttrType] = {}
    for c in items.columns:
        name = str(c)
        if name == "item_id" or name in text_columns:
            continue
        dtype = items[c].dtype
        if pd.api.types.is_bool_dtype(dtype):
            out[name] = "bool"
        elif pd.api.types.is_numeric_dtype(dtype):
            out[name] = "number"
        else:
            out[name] = "text"
    return out


def attribute_types(
    text_columns: Sequence[str], declared: Mapping[str, AttrType]
) -> dict[str, AttrType]:
    """Every filterable field of a catalog and its type (``available`` always included)."""
    out: dict[str, AttrType] = {c: "text" for c in text_columns}
    out.update(declared)
    out[AVAILABLE] = "bool"
    return out


def coerce_column(values: pd.Series, kind: AttrType) -> pd.Series:
    """A column in the form its type is stored in: float64 (NaN = missing), object bools
    (None = missing), object strings (None = missing)."""
    if kind == "number":
        return pd.to_numeric(values, errors="coerce").astype(np.float64)
    present = values.notna().to_numpy()
    if kind == "bool":
        out = [_as_bool(v) if ok else None for v, ok in zip(values.tolist(), present, strict=True)]
        return pd.Series(out, index=values.index, dtype=object)
    out_s = [str(v) if ok else None for v, ok in zip(values.tolist(), present, strict=True)]
    return pd.Series(out_s, index=values.index, dtype=object)


def _as_bool(value: object) -> bool | None:
    if isinstance(value, str):  # a CSV column with gaps is read as strings
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return True
        return False if text in ("false", "0", "no") else None
    return bool(value)


# ---- the table ----------------------------------------------------------------------------


class AttributeTable:
    """The filterable columns of one snapshot's catalog and the masks of filters over them.

    ``removed`` rows (deleted items) and hidden ones (``available = false``) are never in
    a mask. Immutable once built: a catalog change builds a new table for the new snapshot.
    """

    def __init__(
        self,
        items: pd.DataFrame,
        types: Mapping[str, AttrType],
        removed: Iterable[int],
        *,
        cache_bytes: int = MASK_CACHE_BYTES,
    ) -> None:
        self.types: dict[str, AttrType] = dict(types)
        self.n_rows = len(items)
        self._items = items
        self._columns: dict[str, pd.Series] = {}
        gone = np.fromiter(removed, dtype=np.int64)
        alive = np.ones(self.n_rows, dtype=bool)
        alive[gone[(gone >= 0) & (gone < self.n_rows)]] = False
        avail = self.column(AVAILABLE)
        hidden = avail.map(lambda v: v is False).to_numpy(dtype=bool)
        self.visible: np.ndarray = alive & ~hidden
        self.visible.setflags(write=False)
        self.all_visible = bool(self.visible.all())
        self.cache_budget = cache_bytes
        self.cache_bytes = 0  # masks and keys held (filter_bytes + mask.nbytes)
        self._cache: OrderedDict[Filter, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def column(self, name: str) -> pd.Series:
        col = self._columns.get(name)
        if col is None:
            kind = self.types[name]
            if name in self._items.columns:
                col = coerce_column(self._items[name], kind)
            else:
                col = pd.Series([None] * self.n_rows, dtype=object)
            if name == AVAILABLE:  # never set = available
                col = col.where(col.notna(), True)
            self._columns[name] = col
        return col

    def cached(self, conditions: Filter) -> np.ndarray | None:
        """The cached mask of ``conditions`` (marked recently used), or None."""
        with self._lock:
            hit = self._cache.get(conditions)
            if hit is None:
                return None
            self._cache.move_to_end(conditions)
            return hit[0]

    def mask(self, conditions: Filter) -> np.ndarray | None:
        """Rows that are visible and satisfy every condition (read-only), or None when no
        row needs masking (no condition and nothing hidden): the unfiltered fast path.
        A miss is CPU work over the whole catalog: async callers run it in a thread."""
        if not conditions:
            return None if self.all_visible else self.visible
        hit = self.cached(conditions)
        if hit is not None:
            return hit
        m = self.visible.copy()
        for cond in conditions:
            m &= condition_mask(self.column(cond.field), self.types[cond.field], cond)
        m.setflags(write=False)
        cost = filter_bytes(conditions) + m.nbytes
        if cost > self.cache_budget:
            return m
        with self._lock:
            old = self._cache.pop(conditions, None)
            if old is not None:
                self.cache_bytes -= old[1]
            self._cache[conditions] = (m, cost)
            self.cache_bytes += cost
            while self.cache_bytes > self.cache_budget:
                _, (_, freed) = self._cache.popitem(last=False)
                self.cache_bytes -= freed
        return m

    def fields(self, rows: Sequence[int], names: Sequence[str]) -> list[dict[str, Any]]:
        """The values of ``names`` for each of ``rows`` (JSON-ready; None where missing;
        ``available`` true where never set)."""
        out: list[dict[str, Any]] = [{} for _ in rows]
        idx = list(rows)
        for name in names:
            values = self.column(name).iloc[idx].tolist() if idx else []
            for rec, v in zip(out, values, strict=True):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    v = None
                elif isinstance(v, float) and v.is_integer():
                    v = int(v)
                rec[name] = v
        return out


def check_fields(names: Sequence[str] | None, types: Mapping[str, AttrType]) -> list[str]:
    """Requested inline ``fields``, validated (InvalidInputError naming an unknown one)."""
    if not names:
        return []
    unknown = [n for n in names if n not in types]
    if unknown:
        raise InvalidInputError(
            f"fields: unknown field(s) {unknown}; fields of this catalog: {sorted(types)}"
        )
    return list(dict.fromkeys(names))
