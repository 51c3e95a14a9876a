"""The event log: every accepted shopper event, in SQLite (embedded) or PostgreSQL (deployed).

One code path through SQLAlchemy Core for both databases. A row is one event: the user
key the service hashes user ids to, the item, the event type and its weight, the client's
timestamp and an ``event_id`` chosen by the writer, unique, so a batch written twice (a
commit whose acknowledgement was lost, a spool replayed after an outage) is stored once.

The service writes through :class:`app.event_log.EventLogWriter`; the CLI reads through
:func:`export_dataset` (``fusionrec events export``), which turns the log into a dataset
directory in the layout of :mod:`model_store.data.dataset`, so any tool can train on it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from model_store.database import METADATA, Database, redact
from model_store.errors import ConfigError

# the default event types and their training weights; a weight <= 0 is not a positive
# interaction: the event is logged but left out of training sets (dislike also hides the
# item from that shopper's recommendations)
DEFAULT_EVENT_TYPES: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 3.0,
    "purchase": 5.0,
    "dislike": -1.0,
}
DEFAULT_TYPE = "view"

events_table = sa.Table(
    "fusionrec_events",
    METADATA,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("user_key", sa.String(128), nullable=False, index=True),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("weight", sa.Float(), nullable=False),
    sa.Column("value", sa.Float(), nullable=True),
    sa.Column("timestamp", sa.Float(), nullable=False, index=True),
    sa.Column("received", sa.Float(), nullable=False),
    # the recommend/search answer the event follows (attribution); added to older logs by
    # EventStore.create (ALTER TABLE ... ADD COLUMN), so no migration tool is needed
    sa.Column("request_id", sa.String(64), nullable=True),
)

# events the database refused for good (a constraint, a value a column cannot hold): kept
# with the reason instead of blocking the writer; ``payload`` is the event as JSON with
# every non-ASCII character escaped, so any database can hold it
quarantine_table = sa.Table(
    "fusionrec_events_quarantine",
    METADATA,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("user_key", sa.String(128), nullable=False, index=True),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("quarantined", sa.Float(), nullable=False),
)


@dataclass(frozen=True)
class Event:
    """One accepted event, as the service hands it to the log."""

    event_id: str
    user_key: str
    item_id: str
    type: str
    weight: float
    timestamp: float
    value: float | None = None
    received: float = 0.0
    request_id: str | None = None

    def row(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "user_key": self.user_key,
            "item_id": self.item_id,
            "type": self.type,
            "weight": self.weight,
            "value": self.value,
            "timestamp": self.timestamp,
            "received": self.received or time.time(),
            "request_id": self.request_id,
        }


def event_types(spec: Mapping[str, float] | None) -> dict[str, float]:
    """Validated event types → weights (finite numbers, non-empty names)."""
    types = dict(DEFAULT_EVENT_TYPES if spec is None else spec)
    if not types:
        raise ConfigError("event types: at least one type is needed")
    for name, weight in types.items():
        if not name or len(name) > 32:
            raise ConfigError(f"event types: type name {name!r} must have 1..32 characters")
        if not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"event types: weight of {name!r} must be a finite number")
    return types


class EventStore:
    """The log's table in the store's database (:class:`model_store.database.Database`)."""

    def __init__(self, url: str | Database) -> None:
        self.db = url if isinstance(url, Database) else Database(url, what="events")
        self.url = self.db.url
        self.dialect = self.db.dialect
        self.engine = self.db.engine
        self._migrated = False

    def __repr__(self) -> str:
        return f"EventStore({redact(self.url)!r})"

    def create(self) -> None:
        if self._migrated:
            return
        self.db.create()
        if "request_id" not in self._columns():  # a log written before attribution existed
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {events_table.name} ADD COLUMN request_id VARCHAR(64)"
                    )
            except sa.exc.DBAPIError:
                if "request_id" not in self._columns():  # not another replica's ALTER
                    raise
        self._migrated = True

    def _columns(self) -> set[str]:
        with self.engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns(events_table.name)}

    def insert(self, events: Sequence[Event]) -> int:
        """Write ``events`` in one transaction; rows already stored (same event_id) are
        skipped. Returns how many rows were new."""
        if not events:
            return 0
        self.create()
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(events_table).on_conflict_do_nothing(index_elements=["event_id"])
        with self.engine.begin() as conn:
            result = conn.execute(stmt, [e.row() for e in events])
        return int(result.rowcount or 0)

    def quarantine(self, event: Event, reason: str) -> None:
        """Keep an event the database refused for good, with the reason."""
        self.create()
        row = {
            "event_id": event.event_id[:64],
            "user_key": event.user_key[:128],
            "payload": json.dumps(asdict(event), ensure_ascii=True),
            "reason": reason[:2000],
            "quarantined": time.time(),
        }
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(quarantine_table).on_conflict_do_nothing(index_elements=["event_id"])
        with self.engine.begin() as conn:  # a spool replayed twice quarantines once
            conn.execute(stmt, [row])

    def quarantined(self) -> int:
        self.create()
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(quarantine_table)
            return int(conn.execute(query).scalar_one())

    def erase_user(self, user_key: str) -> int:
        """Delete every event of one user (quarantined ones too); returns how many rows
        of the log went."""
        self.create()
        with self.engine.begin() as conn:
            gone = quarantine_table.delete().where(quarantine_table.c.user_key == user_key)
            conn.execute(gone)
            result = conn.execute(events_table.delete().where(events_table.c.user_key == user_key))
        return int(result.rowcount or 0)

    def count(self) -> int:
        self.create()
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(events_table)
            return int(conn.execute(query).scalar_one())

    def frame(self, *, since: float | None = None) -> pd.DataFrame:
        """Every event (``timestamp >= since``), in arrival order."""
        self.create()
        query = sa.select(events_table).order_by(events_table.c.seq)
        if since is not None:
            query = query.where(events_table.c.timestamp >= since)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all(), columns=_COLUMNS)

    def close(self) -> None:
        self.db.close()


_COLUMNS = [c.name for c in events_table.columns]


def training_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Positive events (weight > 0) as dataset interactions: user_id, item_id, timestamp,
    weight. Repeated (user, item) events keep their own rows, as a history does."""
    positive = events[events["weight"] > 0]
    return pd.DataFrame(
        {
            "user_id": positive["user_key"].astype(str).to_numpy(),
            "item_id": positive["item_id"].astype(str).to_numpy(),
            "timestamp": positive["timestamp"].astype(float).to_numpy(),
            "weight": positive["weight"].astype(float).to_numpy(),
        }
    )


def export_dataset(
    store: EventStore,
    out: Path,
    *,
    items: pd.DataFrame,
    since: float | None = None,
) -> tuple[int, int]:
    """Write ``out/interactions.csv`` (positive events of the log) and ``out/items.csv``
    (``items``; only items that exist there are kept). Returns (interactions, items)."""
    frame = training_interactions(store.frame(since=since))
    known = set(items["item_id"].astype(str))
    frame = frame[frame["item_id"].isin(known)]
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "interactions.csv", index=False)
    items.to_csv(out / "items.csv", index=False)
    return len(frame), len(items)


def parse_since(value: str | None) -> float | None:
    """``--since``: unix seconds or an ISO 8601 date/time (UTC when no zone is given)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        ts = pd.Timestamp(value)
    except ValueError as e:
        raise ConfigError(
            f"--since {value!r} is neither unix seconds nor an ISO date (2026-12-01T00:00)"
        ) from e
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return float(ts.timestamp())


def iter_chunks(events: Iterable[Event], size: int) -> Iterable[list[Event]]:
    chunk: list[Event] = []
    for e in events:
        chunk.append(e)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
