"""The catalog as rows (issue 28): item changes are rows of the catalog table, serialised by
the database, applied live on every replica; no bundle version per change.

The table alone on SQLite and PostgreSQL (concurrent writers, none lost; If-Match), then
two real server processes sharing PostgreSQL and Redis: simultaneous writes on both, a
change visible on the other, a restarted replica catching up, PostgreSQL stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from model_store.bundle import store as store_mod
from model_store.catalog.table import CatalogStore, ItemWrite, items_table, state_table
from model_store.errors import DependencyError, NotFoundError, PreconditionFailedError
from tests.helpers.postgres import PostgresServer, postgres_server
from tests.helpers.servers import ADMIN, AUTH, RedisServer, ServerProcess


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _url(backend: str, tmp_path: Path, pg: PostgresServer) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    with sa.create_engine(pg.url).begin() as conn:  # a clean slate per test
        conn.execute(sa.text("DROP TABLE IF EXISTS fusionrec_catalog_items"))
        conn.execute(sa.text("DROP TABLE IF EXISTS fusionrec_catalog_state"))
    return pg.url


def _new(item_id: str, title: str) -> ItemWrite:
    return ItemWrite(item_id, texts={"title": title}, text_vec=np.ones(4, np.float32))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_writers_are_serialised_none_lost(
    backend: str, tmp_path: Path, pg: PostgresServer
) -> None:
    url = _url(backend, tmp_path, pg)
    stores = [CatalogStore(url) for _ in range(4)]  # four "replicas", own engines

    def write(n: int) -> int:
        # every writer also edits one shared item: its version counts every write
        seq, _ = stores[n % 4].write(
            [_new(f"item-{n}", f"t{n}"), ItemWrite("shared", attributes={"n": n}, base=None)]
            if n
            else [_new("item-0", "t0"), _new("shared", "s")]
        )
        return seq

    first = write(0)
    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(write, range(1, 81)))
    assert sorted([first, *seqs]) == list(range(1, 82))  # one seq each, no gap, no repeat
    store = stores[0]
    assert store.head() == 81
    rows = store.rows_after(0)
    assert {r.item_id for r in rows} == {f"item-{n}" for n in range(81)} | {"shared"}
    shared = store.get(["shared"])["shared"]
    assert shared.version == 81 and shared.texts == {"title": "s"} and shared.seq == 81
    assert shared.text_vec is not None and shared.text_vec.tolist() == [1.0] * 4
    last = store.rows_after(80)  # the last writer's own item and the shared one
    assert len(last) == 2 and "shared" in {r.item_id for r in last}
    with sa.create_engine(url).connect() as conn:  # what the rehearsal reads
        assert conn.execute(sa.select(sa.func.max(state_table.c.seq))).scalar() == 81
        assert conn.execute(sa.select(sa.func.count()).select_from(items_table)).scalar() == 82


def test_if_match_deletes_and_unknown_items(tmp_path: Path) -> None:
    store = CatalogStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.write([_new("a", "A")])
    with pytest.raises(PreconditionFailedError, match="version 1"):
        store.write([ItemWrite("a", attributes={"available": False}, if_match=0)])
    seq, (row,) = store.write([ItemWrite("a", attributes={"available": False}, if_match=1)])
    assert row.version == 2 and row.available is False and row.texts == {"title": "A"}
    with pytest.raises(NotFoundError):  # a change of an item nobody has
        store.write([ItemWrite("nope", attributes={"available": False})])
    store.write([ItemWrite("a", delete=True)])
    with pytest.raises(NotFoundError):
        store.write([ItemWrite("a", delete=True)])  # deleted already; nothing half-written
    assert store.head() == seq + 1
    _, (back,) = store.write([_new("a", "again")])  # a new upsert brings it back
    assert not back.deleted and back.version == 4 and back.available is True  # a new item


def test_database_down_is_a_dependency_error(tmp_path: Path) -> None:
    server = PostgresServer()
    server.start()
    store = CatalogStore(server.url)
    store.write([_new("a", "A")])
    server.stop()
    try:
        with pytest.raises(DependencyError) as err:
            store.write([_new("b", "B")])
        assert err.value.retry_after_s > 0 and err.value.dependency == "catalog"
        with pytest.raises(DependencyError):
            store.head()
    finally:
        server.remove()


# ---- two real server processes sharing PostgreSQL and Redis ------------------------------


def _env(store: Path, pg: PostgresServer, redis: RedisServer) -> dict[str, str]:
    return {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_ADMIN_TOKEN": ADMIN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_EVENTS_URL": pg.url,
        "FUSIONREC_REDIS_URL": redis.url,
    }


def _item(item_id: str, title: str) -> dict[str, object]:
    return {"item_id": item_id, "title": title, "description": "a new thing", "category": "x"}


async def _pairs(a: str, b: str, n: int) -> list[int]:
    """``n`` pairs of simultaneous writes, one on each replica: an upsert each, and every
    fifth pair a PATCH on one and an upsert of the same item on the other."""
    async with httpx.AsyncClient(timeout=120, headers=AUTH) as c:

        async def pair(i: int) -> list[int]:
            first = c.post(f"{a}/v1/items", json={"items": [_item(f"pa-{i}", f"A {i}")]})
            if i % 5 == 4:
                second = c.patch(f"{b}/v1/items/pa-{i - 1}", json={"available": False})
            else:
                second = c.post(f"{b}/v1/items", json={"items": [_item(f"pb-{i}", f"B {i}")]})
            return [r.status_code for r in await asyncio.gather(first, second)]

        codes: list[int] = []
        for i in range(n):
            codes += await pair(i)
        return codes


def _ready(url: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{url}/readyz", timeout=10).json()
    return body


def _wait_seq(urls: list[str], seq: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while any(int(_ready(u)["catalog_seq"]) < seq for u in urls):  # type: ignore[call-overload]
        assert time.monotonic() - t0 < timeout_s, [_ready(u) for u in urls]
        time.sleep(0.02)
    return time.monotonic() - t0


def _visible(url: str, item_id: str) -> int:
    return httpx.get(f"{url}/v1/items/{item_id}", timeout=10).status_code


def test_two_replicas_share_the_catalog_through_postgresql(
    store: Path, tmp_path: Path, pg: PostgresServer
) -> None:
    _url("postgresql", tmp_path, pg)
    redis = RedisServer(tmp_path)
    redis.start()
    a, b = ServerProcess(_env(store, pg, redis)), ServerProcess(_env(store, pg, redis))
    try:
        a.start()
        b.start()
        version = store_mod.current_version(store)
        codes = asyncio.run(_pairs(a.url, b.url, 50))
        assert codes == [200] * 100, {c: codes.count(c) for c in set(codes)}
        head = CatalogStore(pg.url).head()
        assert head == 100  # one change per write, none lost, none refused
        _wait_seq([a.url, b.url], head, timeout_s=2)
        for url in (a.url, b.url):
            ready = _ready(url)
            assert ready["catalog_head"] == head and ready["model_version"] == version
            for i in range(50):
                got = httpx.get(f"{url}/v1/items/pa-{i}", timeout=10).json()
                assert got["fields"]["available"] is (i % 5 != 3), (url, i)  # hidden by PATCH
                if i % 5 != 4:
                    assert _visible(url, f"pb-{i}") == 200, (url, i)
        assert store_mod.current_version(store) == version  # no bundle copy per change
        assert len(store_mod.list_versions(store)) == 1

        # a change on one replica is visible on the other within 2 s of the 200
        r = httpx.post(
            f"{a.url}/v1/items", json={"items": [_item("late", "Late")]}, headers=AUTH, timeout=60
        )
        t0 = time.monotonic()
        while _visible(b.url, "late") != 200:
            assert time.monotonic() - t0 < 2.0
            time.sleep(0.02)

        # a replica down while changes are made catches up from its sequence on restart
        b.kill()
        r = httpx.delete(f"{a.url}/v1/items/late", headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{a.url}/v1/items",
            json={"items": [_item("while-down", "W")]},
            headers=AUTH,
            timeout=60,
        )
        seq = r.json()["catalog_seq"]
        b.start()
        assert int(_ready(b.url)["catalog_seq"]) == seq  # applied before it said ready
        assert _visible(b.url, "while-down") == 200 and _visible(b.url, "late") == 404

        # PostgreSQL stopped: writes answer 503 with Retry-After, reads keep serving
        pg.stop()
        try:
            w = httpx.patch(
                f"{a.url}/v1/items/while-down", json={"available": False}, headers=AUTH, timeout=30
            )
            assert w.status_code == 503 and "retry-after" in w.headers, (w.status_code, w.text)
            assert w.json()["error"]["code"] == "catalog_unavailable"
            for url in (a.url, b.url):
                assert _visible(url, "while-down") == 200
                rec = httpx.post(f"{url}/v1/recommend", json={"k": 5}, timeout=30)
                assert rec.status_code == 200 and _ready(url)["catalog_seq"] == seq
        finally:
            pg.start()
        w = httpx.patch(
            f"{a.url}/v1/items/while-down", json={"available": False}, headers=AUTH, timeout=30
        )
        assert w.status_code == 200, w.text
        _wait_seq([a.url, b.url], seq + 1, timeout_s=5)
    finally:
        a.stop()
        b.stop()
        redis.stop()
