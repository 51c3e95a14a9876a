"""Bodies of the event routes (single and batch)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
)

from app.schemas.types import (
    Id,
    Text,
    _Strict,
)

MIN_TIMESTAMP = 946_684_800.0
FUTURE_SLACK_S = 86_400.0
RequestId = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,64}$")]


class EventIn(_Strict):
    user_id: Id
    item_id: Id
    timestamp: float | None = Field(
        None,
        allow_inf_nan=False,
        ge=MIN_TIMESTAMP,
        description="unix seconds, fractions allowed (default: arrival); a finite number from "
        "946684800 (2000-01-01) to one day after the server's clock; history order is "
        "arrival order",
    )
    type: Text = Field(
        "view",
        min_length=1,
        max_length=32,
        description="one of the configured event types (FUSIONREC_EVENT_TYPES; by default "
        "view, click, cart, purchase, dislike); a negative-weight type such as dislike hides "
        "the item from this shopper's recommendations instead of adding it to the history",
        examples=["purchase"],
    )
    value: float | None = Field(
        None, allow_inf_nan=False, description="optional finite number (a price, a rating)"
    )
    request_id: RequestId | None = Field(
        None, description="the `request_id` of the recommend/search answer this event follows"
    )

    @field_validator("timestamp")
    @classmethod
    def _not_far_future(cls, value: float | None) -> float | None:
        if value is not None and value > time.time() + FUTURE_SLACK_S:
            raise ValueError(
                "must not be more than one day after the server's clock (unix seconds, not "
                "milliseconds)"
            )
        return value


class EventOut(BaseModel):
    history_length: int


MAX_BATCH_EVENTS = 1000


class EventsBatchIn(_Strict):
    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_EVENTS,
        description="1..1000 events, each an `EventIn` object, validated one by one: a bad "
        "event is refused in its result, the others are recorded",
    )


class EventResult(BaseModel):
    index: int = Field(description="position of the event in the request")
    accepted: bool
    error: str | None = Field(None, description="what is wrong with a refused event")
    history_length: int | None = None


class EventsBatchOut(BaseModel):
    accepted: int
    refused: int
    results: list[EventResult] = Field(description="one per event, in request order")
