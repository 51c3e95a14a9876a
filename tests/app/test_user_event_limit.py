"""The per-user event rate limit (issue 31, guard against shilling), through a real server
process: one user's events beyond FUSIONREC_USER_EVENTS_PER_MINUTE answer 429 with a
Retry-After and the setting named, in a batch they are refused one by one; other users are
not affected."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.core.event_limit import UserEventLimit
from tests.helpers.servers import ADMIN, ServerProcess


def test_the_bucket_refills_per_minute() -> None:
    limit = UserEventLimit(3, max_users=2)
    assert [limit.take("u") for _ in range(3)] == [None, None, None]
    wait = limit.take("u")
    assert wait is not None and 19 < wait <= 20  # one event every 20 s at 3 a minute
    assert limit.take("v") is None and limit.take("w") is None
    assert limit.take("u") is None  # evicted (LRU bound): a full bucket again
    assert UserEventLimit(0).take("u") is None  # 0 = off


def test_one_users_events_are_limited_per_minute(store: Path) -> None:
    env = {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_ADMIN_TOKEN": ADMIN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
        "FUSIONREC_USER_EVENTS_PER_MINUTE": "5",
    }
    with ServerProcess(env) as srv:
        url = f"{srv.url}/v1/events"
        codes = [
            httpx.post(url, json={"user_id": "shill", "item_id": "i1"}, timeout=30).status_code
            for _ in range(5)
        ]
        assert codes == [200] * 5
        r = httpx.post(url, json={"user_id": "shill", "item_id": "i2"}, timeout=30)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "user_rate_limited"
        assert "FUSIONREC_USER_EVENTS_PER_MINUTE" in r.json()["error"]["message"]
        assert "5 a minute" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 12
        ok = httpx.post(url, json={"user_id": "shopper", "item_id": "i2"}, timeout=30)
        assert ok.status_code == 200, ok.text  # another user is not limited
        batch = [{"user_id": "shill", "item_id": "i3"}, {"user_id": "shopper", "item_id": "i3"}]
        r = httpx.post(f"{url}:batch", json={"events": batch}, timeout=30)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["accepted"] for x in results] == [False, True]
        assert "FUSIONREC_USER_EVENTS_PER_MINUTE" in results[0]["error"]
