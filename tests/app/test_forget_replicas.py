"""Forgetting across replicas (issue 31): two real server processes sharing Redis and
PostgreSQL. A shopper's events go to replica A, the DELETE to replica B; on both the user is
then cold, with no history, no cached vector, no rows in the log and the tombstone set —
and it stays so after a replica restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from app.keys import history_key, negative_key, user_vector_key
from model_store.events.log import events_table
from model_store.privacy.tombstones import TOMBSTONES_KEY
from tests.helpers.bundles import a_trained_user
from tests.helpers.postgres import PostgresServer, postgres_server
from tests.helpers.servers import ADMIN, RedisServer, ServerProcess, store_user_hash


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _env(store: Path, pg: PostgresServer, redis_url: str) -> dict[str, str]:
    return {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_ADMIN_TOKEN": ADMIN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
        "FUSIONREC_EVENTS_URL": pg.url,
        "FUSIONREC_REDIS_URL": redis_url,
        "FUSIONREC_REDIS_TIMEOUT_S": "1",
    }


def _strategy(url: str, user: str) -> str:
    r = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["strategy"])


def _log_rows(pg: PostgresServer, uhash: str) -> int:
    engine = sa.create_engine(pg.url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(events_table)
            return int(conn.execute(query.where(events_table.c.user_key == uhash)).scalar_one())
    finally:
        engine.dispose()


def _user_keys(r: redis.Redis, uhash: str) -> dict[str, int]:
    """Which of the user's keys exist in the shared Redis (0 = gone)."""
    keys = (history_key(uhash), history_key(negative_key(uhash)), user_vector_key(uhash))
    return {k: int(r.exists(k)) for k in keys}


def test_forget_on_one_replica_holds_on_both(
    store: Path, tmp_path: Path, pg: PostgresServer
) -> None:
    user = a_trained_user(store)
    uhash = store_user_hash(store, user)
    other = "someone-else-entirely"
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    r = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=10)
    env = _env(store, pg, redis_server.url)
    a, b = ServerProcess(env), ServerProcess(env)
    try:
        a.start()
        b.start()
        for item, type_ in (("i3", "view"), ("i4", "purchase"), ("i5", "dislike")):
            for who in (user, other):
                ev = {"user_id": who, "item_id": item, "type": type_}
                got = httpx.post(f"{a.url}/v1/events", json=ev, timeout=30)
                assert got.status_code == 200, got.text
        for url in (a.url, b.url):  # the history is shared, the vector gets cached
            assert _strategy(url, user) == "personalized"
        assert _user_keys(r, uhash) == dict.fromkeys(_user_keys(r, uhash), 1)
        assert _log_rows(pg, uhash) == 3

        assert httpx.delete(f"{b.url}/v1/users/{user}", timeout=30).status_code == 204

        assert r.sismember(TOMBSTONES_KEY, uhash)
        assert _log_rows(pg, uhash) == 0  # erased before the 204 (committed or spooled)
        assert _user_keys(r, uhash) == dict.fromkeys(_user_keys(r, uhash), 0)
        for url in (a.url, b.url):
            assert _strategy(url, user) == "cold_start", url
        # recommending stored nothing again: no history, no vector for the forgotten user
        assert _user_keys(r, uhash) == dict.fromkeys(_user_keys(r, uhash), 0)
        other_hash = store_user_hash(store, other)
        assert _log_rows(pg, other_hash) == 3  # nobody else lost anything
        assert r.exists(history_key(other_hash))

        a.stop()  # a restarted replica reads the tombstone, not the bundle's history
        a.start()
        assert _strategy(a.url, user) == "cold_start"
        assert _user_keys(r, uhash) == dict.fromkeys(_user_keys(r, uhash), 0)
        assert _log_rows(pg, uhash) == 0
    finally:
        a.stop()
        b.stop()
        r.close()
        redis_server.stop()
