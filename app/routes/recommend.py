"""POST /v1/recommend and POST /v1/search."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.core.reading import Answer
from app.deps import ClientGuard, ReadingDep
from app.openapi import error_responses
from app.schemas import RecommendRequest, RecommendResponse, SearchRequest

router = APIRouter(
    prefix="/v1",
    tags=["recommend"],
    dependencies=[ClientGuard],
    responses=error_responses(400, 401, 403, 413, 422, 429, 503),
)


def item_dicts(answer: Answer) -> list[dict[str, Any]]:
    """The answer's items as response JSON: keys of what was not asked for are left out."""
    items: list[dict[str, Any]] = []
    for s in answer.items:
        item: dict[str, Any] = {"item_id": s.item_id, "score": s.score}
        if s.explanation is not None:
            item["explanation"] = s.explanation
        if s.fields is not None:
            item["fields"] = s.fields
        items.append(item)
    return items


def _response(answer: Answer) -> Response:
    """The RecommendResponse shape, built directly and encoded with orjson: the hot path
    skips re-validation and the stdlib encoder (the schema is still declared for /docs)."""
    items = item_dicts(answer)
    body = {
        "model_version": answer.model_version,
        "strategy": answer.strategy,
        "items": items,
        "unknown_items": answer.unknown_items,
        "request_id": uuid.uuid4().hex,  # events may name it (attribution)
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
async def recommend(body: RecommendRequest, reading: ReadingDep) -> Response:
    """Next items for a user (stored history) or an explicit history; cold start when empty."""
    return _response(await reading.recommend(request=body))


@router.post("/search", response_model=RecommendResponse, response_model_exclude_none=True)
async def search(body: SearchRequest, reading: ReadingDep) -> Response:
    """Items matching a text query, reordered for the user when a user or history is given."""
    return _response(await reading.search(request=body))
