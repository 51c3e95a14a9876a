"""Request and response bodies of the REST API (ids are strings on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MAX_LIST = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=512)
    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_LIST)
    k: int = Field(10, ge=1, le=1000)

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


class RecommendResponse(BaseModel):
    model_version: str
    strategy: Literal["personalized", "cold_start"]
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
