"""/v1/events through real servers into the event log: durable before the 200 (kill -9),
nothing lost while PostgreSQL is stopped under load, typed events, dislike, forget."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_store.events.log import EventStore
from tests.helpers.postgres import PostgresServer, postgres_server
from tests.helpers.servers import ADMIN, LiveServer, ServerProcess, make_settings


def env(store: Path, events_url: str) -> dict[str, str]:
    return {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_ADMIN_TOKEN": ADMIN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_FOLLOW_POLL_S": "0",
        "FUSIONREC_EVENTS_URL": events_url,
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
    }


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def test_events_answered_200_survive_kill_9(store: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    server = ServerProcess(env(store, url)).start()
    try:
        for k in range(25):
            r = httpx.post(
                f"{server.url}/v1/events",
                json={"user_id": f"u{k % 5}", "item_id": f"i{k}", "type": "click"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
    finally:
        server.kill()  # SIGKILL: no shutdown, no drain
    frame = EventStore(url).frame()
    assert len(frame) == 25
    assert set(frame["type"]) == {"click"} and set(frame["weight"]) == {2.0}
    keys = set(frame["user_key"])
    assert len(keys) == 5 and not keys & {f"u{k}" for k in range(5)}  # keyed hashes only
    assert all(len(k) == 64 for k in keys)


def test_postgres_stopped_under_load_loses_no_accepted_event(
    store: Path, pg: PostgresServer
) -> None:
    server = ServerProcess(env(store, pg.url)).start()
    accepted: list[int] = []
    try:

        async def client(c: httpx.AsyncClient, n: int, stop: asyncio.Event) -> None:
            k = 0
            while not stop.is_set():
                # many shoppers, each under the default per-user limit (600 a minute)
                user = f"load{n}-{k % 100}"
                r = await c.post("/v1/events", json={"user_id": user, "item_id": f"i{k % 300}"})
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    accepted.append(1)
                k += 1

        async def main() -> None:
            stop = asyncio.Event()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                tasks = [asyncio.create_task(client(c, n, stop)) for n in range(4)]
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(2.0)
                await asyncio.to_thread(pg.start)
                await asyncio.sleep(1.5)
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(main())
    finally:
        server.stop()  # graceful: the writer drains
    frame = EventStore(pg.url).frame()
    assert len(accepted) > 50
    assert len(frame) == len(accepted)
    assert frame["event_id"].is_unique


def test_event_types_dislike_and_forget(store: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    settings = make_settings(store, events_url=url)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for item in ("i1", "i2", "i3"):
            assert c.post("/v1/events", json={"user_id": "ann", "item_id": item}).status_code == 200
        top = c.post("/v1/recommend", json={"user_id": "ann", "k": 5}).json()["items"]
        hidden = top[0]["item_id"]
        r = c.post("/v1/events", json={"user_id": "ann", "item_id": hidden, "type": "dislike"})
        assert r.status_code == 200 and r.json()["history_length"] == 3  # not a history item
        again = c.post("/v1/recommend", json={"user_id": "ann", "k": 50}).json()["items"]
        assert hidden not in [i["item_id"] for i in again]
        bad = c.post("/v1/events", json={"user_id": "ann", "item_id": "i1", "type": "love"})
        assert bad.status_code == 422 and "'love'" in bad.text
        assert c.post("/v1/events", json={"user_id": "bob", "item_id": "i4"}).status_code == 200
        before = set(EventStore(url).frame()["user_key"])
        assert len(before) == 2
        assert c.delete("/v1/users/ann").status_code == 204
        after = set(EventStore(url).frame()["user_key"])
        assert len(after) == 1 and after < before  # ann's events erased, bob's kept
        forgotten = c.post("/v1/recommend", json={"user_id": "ann", "k": 50}).json()
        assert forgotten["strategy"] == "cold_start"
