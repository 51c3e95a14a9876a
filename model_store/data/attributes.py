"""Item attributes and the filters over them: typed columns of the catalog, a validated
filter, and the boolean mask of catalog rows that satisfy it.

**Attributes.** Every column of the item table is filterable. Its type is declared:

* the text columns (the LM's input: title, genres, …) are ``text``;
* other columns are declared by the dataset's column type when the bundle is trained
  (``manifest.data.attributes``: numeric → ``number``, boolean → ``bool``, strings that are
  not text columns → ``text``);
* ``available`` is always a ``bool`` attribute, true where it was never set. An item with
  ``available = false`` is *hidden*: no list endpoint returns it (``AttributeTable.visible``).

**Filters.** ``{"field": {"op": value, …}, …}``; every condition must hold. Operators:
``eq``, ``ne``, ``in`` (a list) on every type; ``contains`` on text (the value is one of
the field's ``|``-separated parts, so ``"Comedy"`` matches ``"Action|Comedy"``; on a plain
field it is equality); ``gt``, ``gte``, ``lt``, ``lte`` on numbers. Text comparisons are
exact (case-sensitive). A missing value matches no condition (as SQL's NULL). An unknown
field or operator, or a value of the wrong type, is an ``InvalidInputError`` naming it.

Masks are computed with vectorised pandas/numpy over the whole catalog and cached per
filter (a small LRU per snapshot), so a storefront's repeated filters cost a lookup.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from model_store.errors import InvalidInputError

AttrType = Literal["text", "number", "bool"]
Op = Literal["eq", "ne", "in", "contains", "gt", "gte", "lt", "lte"]
OPS: tuple[str, ...] = get_args(Op)
ORDER_OPS = ("gt", "gte", "lt", "lte")
AVAILABLE = "available"
MAX_IN = 1000  # values in one `in` list
MAX_CONDITIONS = 64
MASK_CACHE = 256  # filters whose masks one snapshot keeps


def ops_of(kind: AttrType) -> tuple[str, ...]:
    if kind == "text":
        return ("eq", "ne", "in", "contains")
    if kind == "number":
        return ("eq", "ne", "in", *ORDER_OPS)
    return ("eq", "ne", "in")


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


# ---- values -------------------------------------------------------------------------------


def check_value(where: str, kind: AttrType, value: object) -> object:
    """``value`` as the attribute type holds it, or InvalidInputError naming ``where``."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidInputError(f"{where}: a boolean is required, got {_shown(value)}")
        return value
    if kind == "number":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(float(value))
        ):
            raise InvalidInputError(f"{where}: a finite number is required, got {_shown(value)}")
        return float(value)
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}: a string is required, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


# ---- filters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    value: Any  # a float, bool, str, or a tuple of them for `in`


Filter = tuple[Condition, ...]


def parse_filter(raw: object, types: Mapping[str, AttrType]) -> Filter:
    """A validated, canonically ordered filter (hashable: the mask cache's key).

    Raises InvalidInputError naming the field, the operator or the value that is wrong and
    the valid ones."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            f"filter: an object {{field: {{operator: value}}}} is required, got {_shown(raw)}"
        )
    out: list[Condition] = []
    for field, ops in raw.items():
        kind = types.get(str(field))
        if kind is None:
            raise InvalidInputError(
                f"filter.{field}: unknown field; filterable fields: {sorted(types)}"
            )
        if not isinstance(ops, Mapping) or not ops:
            raise InvalidInputError(
                f"filter.{field}: an object {{operator: value}} is required, "
                f"operators: {list(ops_of(kind))}"
            )
        for op, value in ops.items():
            where = f"filter.{field}.{op}"
            if op not in OPS:
                raise InvalidInputError(f"{where}: unknown operator; operators: {list(OPS)}")
            if op not in ops_of(kind):
                raise InvalidInputError(
                    f"{where}: operator {op!r} does not apply to the {kind} field {field!r}; "
                    f"its operators: {list(ops_of(kind))}"
                )
            if op == "in":
                if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN:
                    raise InvalidInputError(
                        f"{where}: a list of 1..{MAX_IN} values is required, got {_shown(value)}"
                    )
                values = tuple(check_value(f"{where}[{n}]", kind, v) for n, v in enumerate(value))
                out.append(Condition(str(field), "in", tuple(sorted(set(values), key=repr))))
            else:
                out.append(Condition(str(field), cast(Op, op), check_value(where, kind, value)))
    if len(out) > MAX_CONDITIONS:
        raise InvalidInputError(f"filter: at most {MAX_CONDITIONS} conditions, got {len(out)}")
    return tuple(sorted(out, key=lambda c: (c.field, c.op, repr(c.value))))


def _parts_pattern(value: str) -> str:
    return rf"(?:^|\|)\s*{re.escape(value)}\s*(?:\||$)"


def condition_mask(column: pd.Series, kind: AttrType, cond: Condition) -> np.ndarray:
    """Rows of ``column`` (stored as ``coerce_column`` makes it) where ``cond`` holds."""
    present = column.notna().to_numpy()
    op, v = cond.op, cond.value
    if kind == "number":
        x = column.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if op == "eq":
                m = x == v
            elif op == "ne":
                m = x != v
            elif op == "in":
                m = np.isin(x, np.asarray(v, dtype=np.float64))
            elif op == "gt":
                m = x > v
            elif op == "gte":
                m = x >= v
            elif op == "lt":
                m = x < v
            else:
                m = x <= v
        return np.asarray(m & present, dtype=bool)
    if op == "contains":
        if not present.any():
            return present
        text = column.where(column.notna(), "").astype(str)
        hit = text.str.contains(_parts_pattern(str(v)), regex=True)
        return np.asarray(hit.to_numpy(dtype=bool) & present, dtype=bool)
    if op == "in":
        m = column.isin(list(v)).to_numpy(dtype=bool)
    elif op == "eq":
        m = (column == v).to_numpy(dtype=bool)
    else:
        m = (column != v).to_numpy(dtype=bool)
    return np.asarray(m & present, dtype=bool)


# ---- the table ----------------------------------------------------------------------------


class AttributeTable:
    """The filterable columns of one snapshot's catalog and the masks of filters over them.

    ``removed`` rows (deleted items) and hidden ones (``available = false``) are never in
    a mask. Immutable once built: a catalog change builds a new table for the new snapshot.
    """

    def __init__(
        self, items: pd.DataFrame, types: Mapping[str, AttrType], removed: Iterable[int]
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
        self._cache: OrderedDict[Filter, np.ndarray] = OrderedDict()
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

    def mask(self, conditions: Filter) -> np.ndarray | None:
        """Rows that are visible and satisfy every condition (read-only), or None when no
        row needs masking (no condition and nothing hidden): the unfiltered fast path."""
        if not conditions:
            return None if self.all_visible else self.visible
        with self._lock:
            hit = self._cache.get(conditions)
            if hit is not None:
                self._cache.move_to_end(conditions)
                return hit
        m = self.visible.copy()
        for cond in conditions:
            m &= condition_mask(self.column(cond.field), self.types[cond.field], cond)
        m.setflags(write=False)
        with self._lock:
            self._cache[conditions] = m
            while len(self._cache) > MASK_CACHE:
                self._cache.popitem(last=False)
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
