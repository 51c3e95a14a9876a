"""Against a real redis-server on a free port: cache, histories, outage, forgetting."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers.servers import RedisServer, make_settings, store_user_hash


def _keys(server: RedisServer) -> list[str]:
    r = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return [k.decode() for k in r.scan_iter(match="*", count=1000)]
    finally:
        r.close()


def test_redis_cache_history_outage_and_forget(store: Path, redis_server: RedisServer) -> None:
    settings = make_settings(
        store,
        redis_url=redis_server.url,
        redis_timeout_s=0.05,
        breaker_failures=2,
        breaker_reset_s=30,
    )
    user = "shopper-42"
    uh = store_user_hash(store, user)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["redis"] == "closed"
        for item in ("i1", "i2", "i3"):
            assert c.post("/v1/events", json={"user_id": user, "item_id": item}).status_code == 200
        body = c.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
        assert body["strategy"] == "personalized"
        keys = _keys(redis_server)
        assert f"fusionrec:hist:{uh}" in keys
        assert any(k.startswith("fusionrec:uv:") and k.endswith(uh) for k in keys)
        assert not any(user in k for k in keys)  # ids are hashed
        hit = c.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
        assert hit["items"] == body["items"]

        assert c.delete(f"/v1/users/{user}").status_code == 204
        assert not [k for k in _keys(redis_server) if uh in k]
        assert c.post("/v1/recommend", json={"user_id": user}).json()["strategy"] == "cold_start"

        c.post("/v1/events", json={"user_id": user, "item_id": "i9"})
        redis_server.stop()  # Redis goes away mid-test
        slowest = 0.0
        for n in range(30):
            t0 = time.perf_counter()
            responses = [
                c.post("/v1/recommend", json={"user_id": user, "k": 5}),
                c.post("/v1/recommend", json={"history": [f"i{n}", "i2"], "k": 5}),
                c.post("/v1/events", json={"user_id": f"other-{n}", "item_id": "i4"}),
                c.post("/v1/search", json={"query": "a query", "user_id": user, "k": 3}),
            ]
            slowest = max(slowest, (time.perf_counter() - t0) / len(responses))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert slowest < 0.5, slowest
        assert c.get("/readyz").json()["redis"] in ("open", "half-open")
        r = c.delete(f"/v1/users/{user}")  # cannot erase what it cannot reach: say so
        assert r.status_code == 503 and "Redis" in r.json()["error"]["message"]
