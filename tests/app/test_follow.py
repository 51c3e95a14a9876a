"""Replicas follow CURRENT by themselves: two real server processes sharing a store and a
Redis switch to a new version without an admin call, under load, with no failed request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from model_store.bundle import store as store_mod
from tests.helpers.bundles import clone_version
from tests.helpers.servers import ADMIN, AUTH, RedisServer, ServerProcess


def version_of(url: str) -> str:
    return str(httpx.get(f"{url}/readyz", timeout=5).json()["model_version"])


def wait_for_version(urls: list[str], version: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while any(version_of(u) != version for u in urls):
        assert time.monotonic() - t0 < timeout_s, {u: version_of(u) for u in urls}
        time.sleep(0.05)
    return time.monotonic() - t0


def replicas(store: Path, redis: RedisServer | None, poll_s: float) -> list[ServerProcess]:
    env = {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_ADMIN_TOKEN": ADMIN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_FOLLOW_POLL_S": str(poll_s),
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
    }
    if redis is not None:
        env["FUSIONREC_REDIS_URL"] = redis.url
    return [ServerProcess(env), ServerProcess(env)]


def test_two_processes_follow_a_new_current_under_load(store: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    servers = replicas(store, redis, poll_s=0.5)
    try:
        for s in servers:
            s.start()
        first = store_mod.current_version(store)
        assert [version_of(s.url) for s in servers] == [first, first]

        async def load(url: str, stop: asyncio.Event, codes: list[int]) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    r = await c.post("/v1/recommend", json={"history": [f"i{i % 300}"], "k": 5})
                    codes.append(r.status_code)
                    i += 1

        async def main() -> tuple[list[int], str, float]:
            stop = asyncio.Event()
            codes: list[int] = []
            tasks = [asyncio.create_task(load(s.url, stop, codes)) for s in servers for _ in "ab"]
            await asyncio.sleep(0.5)
            new = await asyncio.to_thread(clone_version, store)  # no admin call follows
            took = await asyncio.to_thread(wait_for_version, [s.url for s in servers], new, 30)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            return codes, new, took

        codes, new, took = asyncio.run(main())
        assert new != first
        assert len(codes) > 20
        assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
        assert took < 10  # within a few poll intervals, loading included
    finally:
        for s in servers:
            s.stop()
        redis.stop()


def test_an_upsert_on_one_replica_reaches_the_other_without_a_new_version(
    store: Path, tmp_path: Path
) -> None:
    """A catalog write is a row, not a bundle: the other replica applies it within 2 s
    (woken by pub/sub) while CURRENT and the model version stay."""
    redis = RedisServer(tmp_path)
    redis.start()
    a, b = replicas(store, redis, poll_s=60)
    try:
        a.start()
        b.start()
        first = store_mod.current_version(store)
        time.sleep(0.5)  # b's subscription is in place
        r = httpx.post(
            f"{a.url}/v1/items",
            json={
                "items": [
                    {
                        "item_id": "new-1",
                        "title": "A brand new item",
                        "description": "new",
                        "category": "drama",
                    }
                ]
            },
            headers=AUTH,
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == first == store_mod.current_version(store)
        t0 = time.monotonic()
        while httpx.get(f"{b.url}/v1/items/new-1", timeout=10).status_code != 200:
            assert time.monotonic() - t0 < 2.0, "not visible on the other replica in 2 s"
            time.sleep(0.02)
        ready = httpx.get(f"{b.url}/readyz", timeout=5).json()
        assert ready["catalog_seq"] == r.json()["catalog_seq"] and ready["catalog_lag_s"] == 0
    finally:
        a.stop()
        b.stop()
        redis.stop()


def test_without_redis_the_poll_follows_and_a_refused_version_is_not_retried(
    store: Path,
) -> None:
    (server,) = replicas(store, None, poll_s=0.3)[:1]
    with server:
        good = clone_version(store)
        wait_for_version([server.url], good, timeout_s=20)
        broken = clone_version(store)
        model = next(p for p in (store / broken).iterdir() if p.suffix == ".safetensors")
        model.write_bytes(b"not a model")  # its sha256 no longer matches the manifest
        time.sleep(1.5)
        assert version_of(server.url) == good  # refused, the good one keeps serving
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        refused = [
            line
            for line in metrics.splitlines()
            if line.startswith('fusionrec_reloads_total{result="refused"}')
        ]
        assert refused and float(refused[0].split()[-1]) == 1.0, refused  # tried once only
        r = httpx.post(f"{server.url}/v1/recommend", json={"history": ["i1"], "k": 3}, timeout=10)
        assert r.status_code == 200
