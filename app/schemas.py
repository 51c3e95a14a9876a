"""Request and response bodies of the REST API (ids are strings on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from model_store.ids import ID_PATTERN, MAX_ID_LENGTH, check_id

# one id rule everywhere (model_store.ids): no control characters, lone surrogates or "/"
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
    AfterValidator(check_id),
]
MAX_LIST = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FILTER_EXAMPLE: dict[str, dict[str, Any]] = {
    "genres": {"contains": "Comedy"},
    "year": {"gte": 1990, "lt": 2000},
    "available": {"eq": True},
    "brand": {"in": ["a", "b"]},
}
FilterField = Field(
    None,
    description=(
        "conditions on item attributes, all of which must hold: {field: {operator: value}}; "
        "operators eq, ne, in (a list), contains (one part of a list-valued or '|'-joined "
        "text field), gt, gte, lt, lte (numbers). Fields: the catalog's text columns, its "
        "declared attributes and `available`. An unknown field or operator is a 422."
    ),
    examples=[FILTER_EXAMPLE],
)
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
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
    k: int = Field(10, ge=1, le=1000)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_LIST)
    exclude_history: bool = True
    explain: bool = False
    filter: dict[str, dict[str, Any]] | None = FilterField
    fields: list[FieldName] | None = FieldsField


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=512)
    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_LIST)
    k: int = Field(10, ge=1, le=1000)
    filter: dict[str, dict[str, Any]] | None = FilterField
    fields: list[FieldName] | None = FieldsField
    mode: Literal["dense", "hybrid"] | None = Field(
        None,
        description="dense (query-text cosine) or hybrid (dense + BM25 with typo tolerance, "
        "fused by reciprocal rank, with a relevance floor); default: the server's "
        "FUSIONREC_SEARCH_MODE",
        examples=["hybrid"],
    )
    offset: int = Field(0, ge=0, le=1000, description="results to skip (pagination)")

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
    strategy: Literal["personalized", "cold_start", "search", "search_personalized"]
    items: list[ScoredItem]
    unknown_items: list[str]


class ItemIn(BaseModel):
    """An item and its text fields (the catalog's text columns, e.g. title, genres)."""

    model_config = ConfigDict(extra="allow")
    item_id: Id


class ItemsUpsert(_Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


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
    k: int = Field(10, ge=1, le=1000)
    filter: dict[str, dict[str, Any]] | None = FilterField
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


class DeleteResponse(BaseModel):
    model_version: str
    deleted: str


class EventIn(_Strict):
    user_id: Id
    item_id: Id
    timestamp: float | None = Field(
        None, description="unix seconds (default: arrival); history order is arrival order"
    )
    type: str = Field(
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
