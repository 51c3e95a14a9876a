"""The field types every body shares: ids (one rule), text without lone surrogates,
bounded filters, strict models."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from model_store.data.filters import (
    MAX_CONDITIONS,
    MAX_FILTER_BYTES,
    MAX_IN,
    MAX_VALUE_CHARS,
    check_bounds,
)
from model_store.errors import InvalidInputError
from model_store.ids import ID_PATTERN, MAX_ID_LENGTH, check_id

# one id rule everywhere (model_store.ids): no control characters, lone surrogates or "/"
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
    AfterValidator(check_id),
]
MAX_LIST = 1000
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _surrogate_problem(value: object) -> str | None:
    """Where a lone surrogate (not encodable as UTF-8) sits in ``value``, or None."""
    if isinstance(value, str):
        bad = _SURROGATE.search(value)
        if bad is None:
            return None
        code = ord(bad.group())
        return f"must not contain a lone surrogate (U+{code:04X} at position {bad.start()})"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, inner in items:
        problem = _surrogate_problem(inner)
        if problem is not None:
            return f"[{key!r}] {problem}"
    return None


def _text(value: str) -> str:
    problem = _surrogate_problem(value)
    if problem is not None:
        raise PydanticCustomError("lone_surrogate", problem)
    return value


# every text field of a body: UTF-8 encodable (a JSON "\ud800" escape is valid JSON, and
# would fail later, deep in the catalog or the log)
Text = Annotated[str, AfterValidator(_text)]


def _extra_text(model: BaseModel) -> None:
    """The free-form fields of a model (``extra="allow"``) checked as ``Text``."""
    for name, value in (model.model_extra or {}).items():
        problem = _surrogate_problem(value)
        if problem is not None:
            raise PydanticCustomError("lone_surrogate", f"{name}: {problem}")


# a path parameter that is an id: the same rule, stated in the schema; the message names it
def _path_id(name: str) -> Any:
    return Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        json_schema_extra={"pattern": ID_PATTERN},
        description=f"{name}: 1..{MAX_ID_LENGTH} characters, no control characters or '/'",
    )


def _checked_id(value: str) -> str:
    try:
        return check_id(value, "an id")
    except ValueError as exc:
        raise PydanticCustomError("invalid_id", str(exc)) from None


ItemIdPath = Annotated[str, _path_id("item_id"), AfterValidator(_checked_id)]
UserIdPath = Annotated[str, _path_id("user_id"), AfterValidator(_checked_id)]


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; strict pydantic would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    # strict: "true" is not a boolean and 5.0 not an integer, as the schema says
    model_config = ConfigDict(extra="forbid", strict=True)


FILTER_EXAMPLE: dict[str, dict[str, Any]] = {
    "genres": {"contains": "Comedy"},
    "year": {"gte": 1990, "lt": 2000},
    "available": {"eq": True},
    "brand": {"in": ["a", "b"]},
}


def _bounded(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The filter's size bounds, checked while the body is validated (before any work)."""
    try:
        check_bounds(value)
    except InvalidInputError as exc:
        raise PydanticCustomError("filter_too_large", str(exc)) from None
    return value


FilterDict = Annotated[dict[str, dict[str, Any]], AfterValidator(_bounded)]
FilterField = Field(
    None,
    description=(
        "conditions on item attributes, all of which must hold: {field: {operator: value}}; "
        "operators eq, ne, in (a list), contains (one part of a list-valued or '|'-joined "
        "text field), gt, gte, lt, lte (numbers). Fields: the catalog's text columns, its "
        "declared attributes and `available`. An unknown field or operator is a 422. "
        f"Bounds (422 naming the one exceeded): at most {MAX_CONDITIONS} conditions, `in` "
        f"lists of 1..{MAX_IN} values, strings of at most {MAX_VALUE_CHARS} characters, "
        f"{MAX_FILTER_BYTES} bytes of field names and values in all."
    ),
    examples=[FILTER_EXAMPLE],
)
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_text)]
FieldsField = Field(
    None,
    max_length=64,
    description="catalog fields returned with each item (text columns and attributes)",
    examples=[["title", "genres"]],
)
