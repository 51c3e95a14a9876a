"""POST /v1/events and DELETE /v1/users/{user_id}."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import ClientGuard, ShoppersDep, WriteGuard
from app.openapi import error_responses
from app.schemas import EventIn, EventOut, EventsBatchIn, EventsBatchOut, UserIdPath

router = APIRouter(
    prefix="/v1",
    tags=["users"],
    dependencies=[ClientGuard, WriteGuard],
    responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503),
)


@router.post("/events", response_model=EventOut)
async def add_event(body: EventIn, shoppers: ShoppersDep) -> EventOut:
    """Record an event in the durable log and the user's history (a dislike hides the item
    instead); answered once the event is durable. The user's cached vector is dropped."""
    return EventOut(history_length=await shoppers.add_event(request=body))


@router.post(
    "/events:batch",
    response_model=EventsBatchOut,
    responses={
        200: {"description": "every event has a result: accepted, or refused with the reason"},
        422: {"description": 'the body is not {"events": [...]} with 1..1000 objects'},
        503: {"description": "the event log cannot take the batch now (Retry-After)"},
    },
)
async def add_events(body: EventsBatchIn, shoppers: ShoppersDep) -> EventsBatchOut:
    """Record up to 1,000 events in one request. Each event is validated like a `POST
    /v1/events` body; the valid ones are made durable in one write of the log, then applied.
    The answer is 200 with one result per event, in order: `accepted`, or the `error` that
    names the refused field. A 503 means none was recorded."""
    return await shoppers.add_events(events=body.events)


@router.delete("/users/{user_id}", status_code=204, response_class=Response)
async def forget_user(user_id: UserIdPath, shoppers: ShoppersDep) -> Response:
    """Forget a user: a durable tombstone first (every replica and the next training honour
    it), then the server-side history, negative feedback, cached vector and their events in
    the log, in Redis and in process."""
    await shoppers.forget_user(user_id=user_id)
    return Response(status_code=204)
