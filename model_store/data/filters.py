"""Filters over item attributes: the operators of each attribute type, the size bounds of
a request's filter, its validation into a canonical (hashable) form, and the boolean mask
of one condition over a catalog column. ``model_store.data.attributes`` holds the table
the masks are cached in.

**Filters.** ``{"field": {"op": value, …}, …}``; every condition must hold. Operators:
``eq``, ``ne``, ``in`` (a list) on every type; ``contains`` on text (the value is one of
the field's ``|``-separated parts, so ``"Comedy"`` matches ``"Action|Comedy"``; on a plain
field it is equality); ``gt``, ``gte``, ``lt``, ``lte`` on numbers. Text comparisons are
exact (case-sensitive). A missing value matches no condition (as SQL's NULL). An unknown
field or operator, or a value of the wrong type, is an ``InvalidInputError`` naming it.

**Bounds** (checked first, before any field is looked up, in time linear in the request):
at most ``MAX_CONDITIONS`` conditions, field names of at most ``MAX_NAME_CHARS``, strings
of at most ``MAX_VALUE_CHARS``, ``in`` lists of 1..``MAX_IN`` values, and
``MAX_FILTER_BYTES`` of names and values in all (UTF-8). A filter over them is an
``InvalidInputError`` naming the bound; without them one 900 KB ``contains`` took seconds
of regex work on the event loop.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from model_store.errors import InvalidInputError

AttrType = Literal["text", "number", "bool"]
Op = Literal["eq", "ne", "in", "contains", "gt", "gte", "lt", "lte"]
OPS: tuple[str, ...] = get_args(Op)
ORDER_OPS = ("gt", "gte", "lt", "lte")
MAX_IN = 1000  # values in one `in` list
MAX_CONDITIONS = 64
MAX_NAME_CHARS = 256  # a field name
MAX_VALUE_CHARS = 1024  # one string value
MAX_FILTER_BYTES = 64 * 1024  # names and values of one filter, UTF-8


def ops_of(kind: AttrType) -> tuple[str, ...]:
    if kind == "text":
        return ("eq", "ne", "in", "contains")
    if kind == "number":
        return ("eq", "ne", "in", *ORDER_OPS)
    return ("eq", "ne", "in")


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


def _value_bytes(where: str, value: object) -> int:
    """UTF-8 size of one value (8 for a number), or InvalidInputError naming ``where`` for
    a string over ``MAX_VALUE_CHARS``."""
    if not isinstance(value, str):
        return 8
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidInputError(f"{where}: at most {MAX_VALUE_CHARS} characters, got {len(value)}")
    return len(value.encode("utf-8", "surrogatepass"))


def _condition_bytes(where: str, op: object, value: object) -> int:
    if op == "in" and isinstance(value, list):
        if not 1 <= len(value) <= MAX_IN:
            raise InvalidInputError(
                f"{where}: a list of 1..{MAX_IN} values is required, got {len(value)} values"
            )
        return sum(_value_bytes(f"{where}[{n}]", v) for n, v in enumerate(value))
    return _value_bytes(where, value)


def check_bounds(raw: Mapping[Any, Any]) -> None:
    """The size bounds of a filter (module docstring), checked before anything else: an
    InvalidInputError naming the field, the operator and the bound."""
    total = 0
    for field, ops in raw.items():
        name = str(field)
        if len(name) > MAX_NAME_CHARS:
            raise InvalidInputError(
                f"filter: field names are at most {MAX_NAME_CHARS} characters, got {len(name)}"
            )
        total += len(name)
        for op, value in ops.items() if isinstance(ops, Mapping) else ():
            total += len(str(op))
            if total > MAX_FILTER_BYTES:
                break
            total += _condition_bytes(f"filter.{name}.{op}", op, value)
        if total > MAX_FILTER_BYTES:
            raise InvalidInputError(
                f"filter: at most {MAX_FILTER_BYTES} bytes of field names and values, "
                f"got more (at filter.{name})"
            )


def parse_filter(raw: object, types: Mapping[str, AttrType]) -> Filter:
    """A validated, canonically ordered filter (hashable: the mask cache's key).

    Raises InvalidInputError naming the bound (``check_bounds``), the field, the operator
    or the value that is wrong and the valid ones."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            f"filter: an object {{field: {{operator: value}}}} is required, got {_shown(raw)}"
        )
    check_bounds(raw)
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


def filter_bytes(conditions: Filter) -> int:
    """The memory a parsed filter holds (its objects as CPython sizes them): what a mask
    cache entry costs besides the mask."""
    total = sys.getsizeof(conditions)
    for cond in conditions:
        total += 2 * sys.getsizeof(cond) + sys.getsizeof(cond.field)  # object + its dict
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        total += sys.getsizeof(cond.value) if isinstance(cond.value, tuple) else 0
        total += sum(sys.getsizeof(v) for v in values)
    return total + 64 + 100 * len(conditions)  # the OrderedDict slot and hashing overhead


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
