"""The event log writer against real databases: SQLite (WAL) and a real PostgreSQL server,
stopped and restarted to test the spool."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.event_log import EventLogWriter
from model_store.errors import DependencyError
from model_store.events.log import Event, EventStore
from tests.helpers.postgres import PostgresServer, postgres_server


def events(user: str, n: int, start: int = 0) -> list[Event]:
    return [
        Event(
            event_id=uuid.uuid4().hex,
            user_key=user,
            item_id=f"i{start + k}",
            type="view",
            weight=1.0,
            timestamp=1_700_000_000.0 + start + k,
        )
        for k in range(n)
    ]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def wait_until(cond: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_records_share_commits_and_all_land_once(
    backend: str, tmp_path: Path, pg: PostgresServer
) -> None:
    url = f"sqlite:///{tmp_path}/events.db" if backend == "sqlite" else pg.url
    store = EventStore(url)
    if backend == "postgresql":
        store.create()
        with store.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE fusionrec_events")
    writer = EventLogWriter(store, tmp_path / "spool")

    async def main() -> None:
        await asyncio.gather(*(writer.record(events(f"u{u}", 5)) for u in range(40)))

    asyncio.run(main())
    frame = store.frame()
    assert len(frame) == 200
    assert frame["event_id"].is_unique
    # one user's events keep their order
    assert frame[frame["user_key"] == "u3"]["item_id"].tolist() == [f"i{k}" for k in range(5)]
    writer.close()


def test_sqlite_log_is_in_wal_mode(tmp_path: Path) -> None:
    store = EventStore(f"sqlite:///{tmp_path}/events.db")
    store.create()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_database_down_spools_then_writes_back_in_order(tmp_path: Path) -> None:
    """Stop PostgreSQL: records still return (spooled, fsynced); start it again: every
    event reaches the log exactly once and in order, the spool is gone."""
    server = PostgresServer()
    server.start()
    try:
        store = EventStore(server.url)
        writer = EventLogWriter(store, tmp_path / "spool", retry_s=0.2)
        before = events("a", 10)
        asyncio.run(writer.record(before))
        server.stop()
        during = events("a", 30, start=10)

        async def outage() -> None:
            for k in range(0, 30, 3):
                await writer.record(during[k : k + 3])

        t0 = time.monotonic()
        asyncio.run(outage())
        assert time.monotonic() - t0 < 15
        assert writer.spooled_bytes() > 0
        assert not writer.healthy
        server.start()
        wait_until(lambda: writer.spooled_bytes() == 0 and writer.healthy)  # by itself
        after = events("a", 5, start=40)
        asyncio.run(writer.record(after))
        frame = store.frame()
        assert frame["item_id"].tolist() == [f"i{k}" for k in range(45)]
        assert frame["event_id"].is_unique
        writer.close()
    finally:
        server.remove()


@pytest.fixture
def stopped_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own, initialised and then stopped: an outage."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()


DEAD_WRITER = """
import asyncio, sys, uuid
from pathlib import Path
from app.event_log import EventLogWriter
from model_store.events.log import Event, EventStore
w = EventLogWriter(EventStore(sys.argv[1]), Path(sys.argv[2]), retry_s=3600)
evs = [Event(uuid.uuid4().hex, "b", f"i{k}", "view", 1.0, 1.7e9 + k) for k in range(7)]
asyncio.run(w.record(evs))
print("answered", flush=True)
sys.stdin.read()  # killed here
"""


def test_spool_of_a_killed_process_is_adopted_by_the_next_writer(
    tmp_path: Path, stopped_pg: PostgresServer
) -> None:
    """A process answers 7 events while PostgreSQL is down and is killed -9; a writer
    started later (a restart, another replica) writes them back, exactly once."""
    import os
    import subprocess
    import sys

    spool = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", DEAD_WRITER, stopped_pg.url, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"answered"
    live = EventLogWriter(EventStore(stopped_pg.url), spool, retry_s=0.1)
    time.sleep(0.5)
    assert len(list(spool.glob("*.jsonl"))) == 2  # the live owner's spool is not adopted
    proc.kill()
    proc.wait(10)
    (orphan,) = [p for p in spool.glob("*.jsonl") if p != live.spool]
    with open(orphan, "ab") as f:  # its last write torn by the kill (never answered)
        f.write(b'{"op": "insert", "events": [{"event_id"')
    stopped_pg.start()
    wait_until(lambda: not orphan.exists())
    store = EventStore(stopped_pg.url)
    assert store.frame()["item_id"].tolist() == [f"i{k}" for k in range(7)]
    live.close()


def test_erase_removes_the_users_events_including_spooled_ones(
    tmp_path: Path, stopped_pg: PostgresServer
) -> None:
    stopped_pg.start()
    store = EventStore(stopped_pg.url)
    writer = EventLogWriter(store, tmp_path / "spool", retry_s=0.2)
    asyncio.run(writer.record(events("gone", 4) + events("kept", 2)))
    stopped_pg.stop()
    asyncio.run(writer.record(events("gone", 3, start=4)))
    asyncio.run(writer.erase("gone"))
    asyncio.run(writer.record(events("kept", 1, start=2)))
    assert writer.spooled_bytes() > 0
    stopped_pg.start()
    asyncio.run(writer.record(events("kept", 1, start=3)))
    wait_until(lambda: writer.spooled_bytes() == 0 and writer.healthy)
    frame = store.frame()
    assert set(frame["user_key"]) == {"kept"}
    assert frame["item_id"].tolist() == ["i0", "i1", "i2", "i3"]
    writer.close()


def test_full_spool_refuses_with_retry_after(tmp_path: Path, stopped_pg: PostgresServer) -> None:
    writer = EventLogWriter(
        EventStore(stopped_pg.url), tmp_path / "spool", spool_max_bytes=100, retry_s=3600
    )
    asyncio.run(writer.record(events("c", 5)))
    with pytest.raises(DependencyError) as err:
        asyncio.run(writer.record(events("c", 1)))
    assert err.value.dependency == "event_log"
    assert err.value.retry_after_s >= 1


def test_bad_url_names_it_without_its_password() -> None:
    from model_store.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        EventStore("mysql://shop:hunter2@db/events")
    assert "hunter2" not in str(err.value)
    assert "only sqlite and postgresql" in str(err.value)


def test_the_server_user_can_reach_its_data_directory() -> None:
    """A clone in a home directory of mode 700 (/root) must still run the PostgreSQL tests:
    the data directory is where the user running the server can reach it."""
    server = PostgresServer()
    try:
        cmd = ["test", "-w", str(server.dir), "-a", "-x", str(server.dir)]
        if server.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        assert subprocess.run(cmd, check=False).returncode == 0, server.dir
    finally:
        server.remove()
