"""POST /admin/reload."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.deps import AdminGuard, SnapshotsDep
from app.openapi import error_responses
from app.schemas import ReloadResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminGuard],
    responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503),
)


@router.post("/reload", response_model=ReloadResponse)
async def reload(snapshots: SnapshotsDep) -> ReloadResponse:
    """Swap to the store's CURRENT bundle; a broken one answers 409 and the old keeps serving."""
    return ReloadResponse.model_validate(asdict(await snapshots.reload()))
