"""Bodies of the admin and health routes."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None
    reloaded: bool


class Health(BaseModel):
    status: Literal["ok"]


class EventLogHealth(BaseModel):
    healthy: bool = Field(description="false while the database is unreachable (spooling)")
    pending_events: int = Field(description="events waiting for the writer thread")
    spooled_events: int = Field(description="events in this process's spool, not yet written")
    spooled_bytes: int = Field(description="bytes in the spools (this process's and adopted)")
    oldest_spooled_age_s: float = Field(description="age of the oldest spooled event")
    quarantined_events: int = Field(
        description="events the database refused for good since start (kept in "
        "fusionrec_events_quarantine with the reason)"
    )


class Ready(BaseModel):
    status: Literal["ready"]
    model_version: str
    index: str
    index_items: int
    catalog_items: int
    search_index: str = Field(description="ANN index over text embeddings, or 'exact scan'")
    redis: Literal["disabled", "closed", "open", "half-open"]
    catalog_seq: int = Field(description="the catalog table's changes this replica applied")
    catalog_head: int = Field(description="the catalog table's newest change, as last read")
    catalog_lag_s: float = Field(description="seconds behind the head (0: caught up)")
    event_log: EventLogHealth | None = Field(None, description="absent when the log is off")
