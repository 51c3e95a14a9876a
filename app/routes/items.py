"""GET /v1/items/{item_id} and POST /v1/items (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminGuard, ClientGuard, RecommenderDep
from app.schemas import ItemOut, ItemsUpsert, UpsertResponse

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get("/{item_id}", response_model=ItemOut, dependencies=[ClientGuard])
async def get_item(item_id: str, rec: RecommenderDep) -> ItemOut:
    version, fields, trained = rec.item(item_id=item_id)
    return ItemOut(item_id=item_id, model_version=version, fields=fields, trained=trained)


@router.post("", response_model=UpsertResponse, dependencies=[AdminGuard])
async def upsert_items(body: ItemsUpsert, rec: RecommenderDep) -> UpsertResponse:
    """Add or edit up to 1,000 items; live at once and persisted as a new bundle version."""
    result = await rec.upsert_items(items=[i.model_dump() for i in body.items])
    return UpsertResponse(
        model_version=result.model_version, added=result.added, updated=result.updated
    )
