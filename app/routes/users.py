"""POST /v1/events and DELETE /v1/users/{user_id}."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import ClientGuard, ShoppersDep, WriteGuard
from app.openapi import error_responses
from app.schemas import EventIn, EventOut, UserIdPath

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


@router.delete("/users/{user_id}", status_code=204, response_class=Response)
async def forget_user(user_id: UserIdPath, shoppers: ShoppersDep) -> Response:
    """Forget a user: a durable tombstone first (every replica and the next training honour
    it), then the server-side history, negative feedback, cached vector and their events in
    the log, in Redis and in process."""
    await shoppers.forget_user(user_id=user_id)
    return Response(status_code=204)
