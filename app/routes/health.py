"""GET /healthz (alive), /readyz (bundle and index loaded), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import SnapshotsDep
from app.metrics import Metrics
from app.openapi import error_responses
from app.redis_gateway import RedisGateway
from app.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses=error_responses(503))
async def readyz(request: Request, snapshots: SnapshotsDep) -> Ready:
    snap = snapshots.ready()  # 503 not_ready while no bundle is loaded
    gateway: RedisGateway | None = request.state.redis
    return Ready(
        status="ready",
        model_version=snap.version,
        index=f"{snap.index.kind} ({snap.index_source})",
        index_items=snap.index.ntotal,
        catalog_items=snap.n_items,
        search_index=(
            "exact scan"
            if snap.text_index is None
            else f"{snap.text_index.kind} ({snap.text_index.ntotal} items)"
        ),
        redis="disabled" if gateway is None else gateway.breaker.state,
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m: Metrics = request.state.metrics
    gateway: RedisGateway | None = request.state.redis
    m.redis_errors.set(0 if gateway is None or gateway.breaker.state == "closed" else 1)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
