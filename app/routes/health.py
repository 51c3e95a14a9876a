"""GET /healthz (alive), /readyz (bundle and index loaded), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import SnapshotsDep
from app.metrics import Metrics
from app.openapi import error_responses
from app.redis_gateway import RedisGateway
from app.schemas import EventLogHealth, Health, Ready

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
        catalog_seq=snap.catalog_seq,
        catalog_head=max(snapshots.catalog_head, snap.catalog_seq),
        catalog_lag_s=snapshots.catalog_lag_s(),
        event_log=_event_log_health(request),
    )


def _event_log_health(request: Request) -> EventLogHealth | None:
    writer = request.state.shoppers.event_log
    return None if writer is None else EventLogHealth.model_validate(writer.health())


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m: Metrics = request.state.metrics
    gateway: RedisGateway | None = request.state.redis
    m.redis_errors.set(0 if gateway is None or gateway.breaker.state == "closed" else 1)
    writer = request.state.shoppers.event_log
    if writer is not None:
        h = writer.health()
        m.events_spooled.set(h["spooled_events"])
        m.events_spool_bytes.set(h["spooled_bytes"])
        m.events_spool_age.set(h["oldest_spooled_age_s"])
        m.events_quarantined.set(h["quarantined_events"])
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
