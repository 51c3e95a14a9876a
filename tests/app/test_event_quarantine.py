"""Permanent vs transient database errors in the event-log writer, against real SQLite and
PostgreSQL: an event the database refuses for good is quarantined with the reason and the
rest of its batch is committed, an erasure behind it is applied, and a poisoned spool left
by a dead process is written back once at start, not retried forever."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.event_log import EventLogWriter
from app.event_ops import QUARANTINE_FILE
from model_store.events.log import Event, EventStore, quarantine_table
from tests.helpers.postgres import PostgresServer, postgres_server


def event(user: str, item: str, ts: float = 1_700_000_000.0) -> Event:
    return Event(uuid.uuid4().hex, user, item, "view", 1.0, ts, request_id="r" + item)


def poison(backend: str, user: str = "p") -> Event:
    """An event this database refuses for good: NaN into a NOT NULL REAL column (SQLite
    stores NaN as NULL), a NUL byte in a PostgreSQL text column."""
    if backend == "sqlite":
        return event(user, "bad", float("nan"))
    return event(user, "bad\x00item")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, EventStore]]:
    if request.param == "sqlite":
        s = EventStore(f"sqlite:///{tmp_path}/events.db")
    else:
        s = EventStore(request.getfixturevalue("pg").url)
        s.create()
        with s.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE fusionrec_events, fusionrec_events_quarantine")
    yield request.param, s
    s.close()


def quarantined_rows(s: EventStore) -> list[dict[str, object]]:
    with s.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(quarantine_table)).mappings()]


def test_a_refused_event_is_quarantined_and_the_rest_committed(
    store: tuple[str, EventStore], tmp_path: Path
) -> None:
    backend, s = store
    writer = EventLogWriter(s, tmp_path / "spool")
    bad = poison(backend)

    async def main() -> None:
        # one group commit holding the poisoned event between good ones
        await asyncio.gather(
            writer.record([event("a", "1"), event("a", "2")]),
            writer.record([bad]),
            writer.record([event("b", "3")]),
        )
        await writer.record([event("c", "4")])  # the next one is committed too

    asyncio.run(main())
    frame = s.frame()
    assert sorted(frame["item_id"]) == ["1", "2", "3", "4"]
    assert set(frame["request_id"]) == {"r1", "r2", "r3", "r4"}
    rows = quarantined_rows(s)
    assert [r["event_id"] for r in rows] == [bad.event_id]
    assert rows[0]["reason"] and "Error" in str(rows[0]["reason"])
    assert json.loads(str(rows[0]["payload"]))["user_key"] == "p"
    health = writer.health()
    assert health["healthy"] and health["quarantined_events"] == 1
    assert health["spooled_events"] == 0 and health["spooled_bytes"] == 0
    writer.close()


def test_an_erasure_behind_a_refused_event_is_applied(
    store: tuple[str, EventStore], tmp_path: Path
) -> None:
    backend, s = store
    s.insert([event("gone", "1"), event("gone", "2"), event("kept", "3")])
    writer = EventLogWriter(s, tmp_path / "spool")

    async def main() -> None:
        await asyncio.gather(
            writer.record([poison(backend, "gone")]),
            writer.erase("gone"),
            writer.record([event("kept", "4")]),
        )

    asyncio.run(main())
    frame = s.frame()
    assert set(frame["user_key"]) == {"kept"} and len(frame) == 2
    assert writer.health()["quarantined_events"] == 1
    assert quarantined_rows(s) == []  # erased with the user's other events
    assert writer.health()["spooled_events"] == 0
    writer.close()


def test_a_poisoned_spool_is_written_back_once_at_start(
    store: tuple[str, EventStore], tmp_path: Path
) -> None:
    """A spool a dead process left, holding a refused event, an unreadable line and an
    erasure: the next writer commits the good events, applies the erasure, quarantines
    the rest and deletes the spool — no loop."""
    backend, s = store
    spool = tmp_path / "spool"
    spool.mkdir()
    bad, good = poison(backend), event("a", "1")
    lines = [
        {"op": "insert", "events": [asdict(good), asdict(bad)]},
        {"op": "insert", "events": [{"not": "an event"}]},
        {"op": "insert", "events": [asdict(event("x", "2"))]},
        {"op": "erase", "user_key": "x"},
    ]
    (spool / "deadhost-1-abc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    writer = EventLogWriter(s, spool, retry_s=0.05)
    deadline = time.monotonic() + 20
    while (spool / "deadhost-1-abc.jsonl").exists():
        assert time.monotonic() < deadline, "the poisoned spool was never written back"
        time.sleep(0.05)
    assert s.frame()["event_id"].tolist() == [good.event_id]
    assert [r["event_id"] for r in quarantined_rows(s)] == [bad.event_id]
    kept = [json.loads(x) for x in (spool / QUARANTINE_FILE).read_text().splitlines()]
    assert len(kept) == 1 and kept[0]["line"].startswith('{"op": "insert"')
    assert writer.health()["quarantined_events"] == 2
    # a second start finds nothing left to retry
    writer.close()
    again = EventLogWriter(s, spool)
    assert again.health()["spooled_bytes"] == 0
    again.close()
    assert len(s.frame()) == 1


def test_an_old_log_gets_the_request_id_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE fusionrec_events (seq INTEGER PRIMARY KEY, event_id VARCHAR(64) "
            "NOT NULL UNIQUE, user_key VARCHAR(128) NOT NULL, item_id VARCHAR(256) NOT NULL, "
            "type VARCHAR(32) NOT NULL, weight FLOAT NOT NULL, value FLOAT, "
            "timestamp FLOAT NOT NULL, received FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO fusionrec_events VALUES (1, 'e1', 'u', 'i', 'view', 1, NULL, 5, 5)"
        )
    engine.dispose()
    s = EventStore(url)
    s.insert([replace(event("u", "j"), request_id="abc")])
    frame = s.frame()
    assert frame["request_id"].isna().tolist() == [True, False]
    assert frame["request_id"].iloc[1] == "abc"
    s.close()
