"""Request and response bodies of the REST API (ids are strings on the wire)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
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


class RecommendRequest(_Strict):
    user_id: Id | None = Field(
        None, description="uses the server-side history when `history` is not given"
    )
    history: list[Id] | None = Field(
        None,
        max_length=MAX_LIST,
        description="item ids, oldest first; wins over the stored history",
    )
    k: Int = Field(10, ge=1, le=1000)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_LIST)
    exclude_history: bool = True
    explain: bool = False
    filter: FilterDict | None = FilterField
    fields: list[FieldName] | None = FieldsField


class SearchRequest(_Strict):
    query: Text = Field(min_length=1, max_length=512)
    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_LIST)
    k: Int = Field(10, ge=1, le=1000)
    filter: FilterDict | None = FilterField
    fields: list[FieldName] | None = FieldsField
    mode: Literal["dense", "hybrid"] | None = Field(
        None,
        description="dense (query-text cosine) or hybrid (dense + BM25 with typo tolerance, "
        "fused by reciprocal rank, with a relevance floor); default: the server's "
        "FUSIONREC_SEARCH_MODE",
        examples=["hybrid"],
    )
    offset: Int = Field(0, ge=0, le=1000, description="results to skip (pagination)")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain a non-space character (1..512 characters)")
        return value


class HistoryMatch(BaseModel):
    item_id: str
    text_similarity: float
    vector_similarity: float


class Explanation(BaseModel):
    text_similarity: float = Field(description="max text cosine to a history item")
    retrieval_score: float = Field(description="<user vector, item vector>")
    history_items: list[HistoryMatch] = Field(
        description="history items most similar to this one by text, best first"
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float
    explanation: Explanation | None = None
    fields: dict[str, Any] | None = Field(None, description="the requested `fields`")


class RecommendResponse(BaseModel):
    model_version: str
    strategy: Literal["personalized", "cold_start"]
    items: list[ScoredItem]
    unknown_items: list[str]


class ItemIn(BaseModel):
    """An item and its text fields (the catalog's text columns, e.g. title, genres)."""

    model_config = ConfigDict(extra="allow")
    item_id: Id

    @model_validator(mode="after")
    def _utf8(self) -> ItemIn:
        _extra_text(self)
        return self


class ItemsUpsert(_Strict):
    items: list[ItemIn] = Field(
        min_length=1,
        max_length=1000,
        description="applied in order: entries for the same item_id merge, later fields win",
    )

    @field_validator("items")
    @classmethod
    def _merged(cls, items: list[ItemIn]) -> list[ItemIn]:
        """One entry per item id (a JSON schema cannot state uniqueness by a property)."""
        merged: dict[str, dict[str, Any]] = {}
        for item in items:
            merged.setdefault(item.item_id, {}).update(item.model_dump())
        if len(merged) == len(items):
            return items
        return [ItemIn.model_validate(fields) for fields in merged.values()]


class UpsertResponse(BaseModel):
    model_version: str
    added: list[str]
    updated: list[str]


class ItemOut(BaseModel):
    item_id: str
    model_version: str
    fields: dict[str, Any]
    trained: bool = Field(description="has a trained ID embedding (else: text path only)")


class SimilarRequest(_Strict):
    k: Int = Field(10, ge=1, le=1000)
    filter: FilterDict | None = FilterField
    fields: list[FieldName] | None = FieldsField
    explain: bool = False


class SimilarExplanation(BaseModel):
    vector_similarity: float = Field(description="cosine of the fused item vectors (the score)")
    text_similarity: float = Field(description="cosine of the LM text embeddings")
    collaborative_similarity: float | None = Field(
        description="cosine of the trained ID embeddings; null when either item has none "
        "(added by text only)"
    )
    seed_has_id: bool
    item_has_id: bool


class SimilarItem(BaseModel):
    item_id: str
    score: float
    explanation: SimilarExplanation | None = None
    fields: dict[str, Any] | None = None


class SimilarResponse(BaseModel):
    model_version: str
    item_id: str
    items: list[SimilarItem]


class ItemsBatchGet(_Strict):
    ids: list[Id] = Field(min_length=1, max_length=MAX_LIST, examples=[["1", "50", "181"]])
    fields: list[FieldName] | None = FieldsField


class ItemsBatch(BaseModel):
    model_version: str
    items: list[ItemOut]
    not_found: list[str] = Field(description="ids not in the catalog (or deleted)")


class ItemPatch(BaseModel):
    """Fields to change: text columns (re-encoded) and attributes such as `available`."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"available": False}, {"title": "New title"}]},
    )

    @model_validator(mode="after")
    def _utf8(self) -> ItemPatch:
        _extra_text(self)
        return self


class DeleteResponse(BaseModel):
    model_version: str
    deleted: str


class EventIn(_Strict):
    user_id: Id
    item_id: Id
    timestamp: float | None = Field(
        None, description="unix seconds (default: arrival); history order is arrival order"
    )
    type: Text = Field(
        "view",
        min_length=1,
        max_length=32,
        description="one of the configured event types (FUSIONREC_EVENT_TYPES; by default "
        "view, click, cart, purchase, dislike); a negative-weight type such as dislike hides "
        "the item from this shopper's recommendations instead of adding it to the history",
        examples=["purchase"],
    )
    value: float | None = Field(None, description="optional number (a price, a rating)")


class EventOut(BaseModel):
    history_length: int


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None
    reloaded: bool


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model_version: str
    index: str
    index_items: int
    catalog_items: int
    search_index: str = Field(description="ANN index over text embeddings, or 'exact scan'")
    redis: Literal["disabled", "closed", "open", "half-open"]
