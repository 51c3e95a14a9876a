"""Bodies of recommend, search, similar and the catalog's item routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.schemas.types import (
    MAX_LIST,
    FieldName,
    FieldsField,
    FilterDict,
    FilterField,
    Id,
    Int,
    Text,
    _extra_text,
    _Strict,
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
    strategy: Literal["personalized", "cold_start", "search", "search_personalized"]
    items: list[ScoredItem]
    unknown_items: list[str]
    request_id: str = Field(
        description="this answer's id (uuid4 hex); an event that follows it names it in "
        "`request_id`, so clicks and purchases are attributed to the model that served them"
    )


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
    catalog_seq: int = Field(0, description="the catalog change that holds this write")


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
    catalog_seq: int = Field(0, description="the catalog change that holds this delete")


# the range of an event's timestamp: from 2000-01-01 to one day after the server's clock
