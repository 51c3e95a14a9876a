"""Faults under load against a real uvicorn: Redis outages, hot reload, a corrupt bundle.

Each test runs closed-loop client threads for a few seconds while the fault happens and then
checks every single response. Ids of the tiny synthetic catalog are ``i0`` … ``i399``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.keys import history_key
from model_store.bundle import store as store_mod
from tests.helpers.bundles import clone_version
from tests.helpers.load import LoadThread, metric
from tests.helpers.servers import AUTH, LiveServer, RedisServer, make_settings, store_user_hash

HISTORIES = [[f"i{(7 * h + j) % 400}" for j in range(5)] for h in range(8)]


def recommend_mix(i: int) -> tuple[str, str, dict[str, object] | None]:
    """Mostly repeated histories (cache hits once warm), some events and stored users."""
    if i % 5 == 4:
        return "POST", "/v1/events", {"user_id": f"load-{i % 13}", "item_id": f"i{i % 400}"}
    if i % 5 == 3:
        return "POST", "/v1/recommend", {"user_id": f"load-{i % 13}", "k": 5}
    return "POST", "/v1/recommend", {"history": HISTORIES[i % len(HISTORIES)], "k": 5}


def _redis(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)


def _stored(server: RedisServer, store: Path, user: str) -> list[str]:
    r = _redis(server)
    try:
        return [x.decode() for x in r.lrange(history_key(store_user_hash(store, user)), 0, -1)]
    finally:
        r.close()


def _is_subsequence(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(any(x == y for y in it) for x in needle)


def _wait_breaker_closed(url: str, timeout_s: float = 10) -> None:
    """Nudge the half-open probe with history reads until /readyz reports Redis closed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        httpx.post(f"{url}/v1/recommend", json={"user_id": "probe", "k": 1}, timeout=10)
        if httpx.get(f"{url}/readyz", timeout=10).json()["redis"] == "closed":
            return
        time.sleep(0.1)
    raise AssertionError("the Redis circuit breaker did not close after Redis came back")


def _post_event(url: str, user: str, item: str) -> None:
    r = httpx.post(f"{url}/v1/events", json={"user_id": user, "item_id": item}, timeout=10)
    assert r.status_code == 200, r.text


def test_redis_restart_under_load(store: Path, redis_server: RedisServer) -> None:
    """Redis stopped and restarted during load: zero failed requests, the cache refills,
    and events accepted during the outage reach the new Redis (written back)."""
    settings = make_settings(
        store,
        redis_url=redis_server.url,
        redis_timeout_s=0.05,
        breaker_failures=2,
        breaker_reset_s=0.3,
    )
    with LiveServer(settings) as srv, LoadThread(srv.url, recommend_mix, clients=4) as load:
        _post_event(srv.url, "outage-shopper", "i1")
        time.sleep(1.5)
        hits_before_outage = metric(
            httpx.get(f"{srv.url}/metrics").text, "fusionrec_user_vector_cache_total", result="hit"
        )
        assert hits_before_outage > 0  # the repeated histories are served from the cache
        redis_server.stop()
        during: list[str] = []
        for n in range(2, 6):  # accepted while Redis is down
            _post_event(srv.url, "outage-shopper", f"i{n}")
            during.append(f"i{n}")
            time.sleep(0.3)
        n_before_restart = load.count()
        redis_server.start()  # a new, empty Redis on the same port (no persistence in tests)
        _wait_breaker_closed(srv.url)
        hits_at_restart = metric(
            httpx.get(f"{srv.url}/metrics").text, "fusionrec_user_vector_cache_total", result="hit"
        )
        time.sleep(2.0)
        _post_event(srv.url, "outage-shopper", "i9")
        metrics_after = httpx.get(f"{srv.url}/metrics").text
    assert load.count() > n_before_restart + 20, "load kept running after the restart"
    failures = load.failures()
    assert not failures, failures[:5]
    r = _redis(redis_server)
    try:
        vector_keys = list(r.scan_iter(match="fusionrec:uv:*", count=1000))
    finally:
        r.close()
    assert vector_keys, "the cache refilled the restarted Redis"
    assert (
        metric(metrics_after, "fusionrec_user_vector_cache_total", result="hit") > hits_at_restart
    )
    # the events of the outage were written back, in order, before the next one
    assert _is_subsequence([*during, "i9"], _stored(redis_server, store, "outage-shopper"))


def test_events_during_redis_outage_are_not_lost(
    store: Path,
    redis_server: RedisServer,
) -> None:
    """Redis unresponsive (SIGSTOP, data kept) while events arrive: after it resumes, the
    stored list has every accepted event in arrival order — also for a user who sends
    nothing more (the background write-back) — and the in-process copy is dropped."""
    settings = make_settings(
        store,
        redis_url=redis_server.url,
        redis_timeout_s=0.05,
        breaker_failures=2,
        breaker_reset_s=0.3,
    )
    assert redis_server.proc is not None
    with LiveServer(settings) as srv:
        for item in ("i1", "i2"):
            _post_event(srv.url, "kept", item)
        assert _stored(redis_server, store, "kept") == ["i1", "i2"]
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            for item in ("i3", "i4", "i5"):
                _post_event(srv.url, "kept", item)
            _post_event(srv.url, "quiet", "i7")  # this user sends nothing after the outage
            # reads during the outage see the in-process copy
            r = httpx.post(f"{srv.url}/v1/recommend", json={"user_id": "quiet", "k": 3}, timeout=10)
            assert r.status_code == 200 and r.json()["strategy"] == "personalized"
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        _wait_breaker_closed(srv.url)
        _post_event(srv.url, "kept", "i6")
        deadline = time.monotonic() + 10
        while not _stored(redis_server, store, "quiet") and time.monotonic() < deadline:
            time.sleep(0.1)
        kept = _stored(redis_server, store, "kept")
        quiet = _stored(redis_server, store, "quiet")
    # at least once: a write that timed out while Redis was frozen may also have been
    # executed when it resumed, so an event can appear twice, but none is missing
    assert _is_subsequence(["i1", "i2", "i3", "i4", "i5", "i6"], kept), kept
    assert "i7" in quiet, quiet


def test_shutdown_writes_back_events_of_a_redis_outage(
    store: Path, redis_server: RedisServer
) -> None:
    """Events accepted while Redis was frozen, then the service stops right after Redis
    resumes (no request in between to start the background write-back): the shutdown
    writes them back instead of dropping them with the process."""
    settings = make_settings(
        store,
        redis_url=redis_server.url,
        redis_timeout_s=0.05,
        breaker_failures=2,
        breaker_reset_s=0.3,
        history_drain_s=10,
    )
    assert redis_server.proc is not None
    with LiveServer(settings) as srv:
        _post_event(srv.url, "leaving", "i1")
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            for item in ("i2", "i3", "i4"):
                _post_event(srv.url, "leaving", item)  # accepted in-process
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert not srv.thread.is_alive()
    assert _is_subsequence(["i1", "i2", "i3", "i4"], _stored(redis_server, store, "leaving"))


def test_hot_reload_under_load_versions_existed(store: Path) -> None:
    """New bundles published and hot-reloaded under load: zero failures; every response's
    model_version had been published before that response; after a reload returns, new
    requests are answered by the new bundle."""
    first = store_mod.current_version(store)
    publish_started: dict[str, float] = {first: float("-inf")}
    reloaded_at: list[tuple[float, str]] = []
    with (
        LiveServer(make_settings(store)) as srv,
        LoadThread(srv.url, recommend_mix, clients=4) as load,
    ):
        for _ in range(3):
            time.sleep(0.6)
            t0 = time.monotonic()
            version = clone_version(store)
            publish_started[version] = t0
            r = httpx.post(f"{srv.url}/admin/reload", headers=AUTH, timeout=60)
            assert r.status_code == 200 and r.json()["model_version"] == version, r.text
            reloaded_at.append((time.monotonic(), version))
        time.sleep(0.6)
    failures = load.failures()
    assert not failures, failures[:5]
    order = list(publish_started)
    seen = set()
    for o in load.outcomes:
        v = str((o.body or {}).get("model_version", ""))
        if not v:
            continue  # events carry no model version
        seen.add(v)
        assert v in publish_started, v
        assert publish_started[v] <= o.done, f"{v} answered before it was published"
        for t_reload, newer in reloaded_at:
            if o.sent > t_reload:
                assert order.index(v) >= order.index(newer), (v, newer)
    assert len(seen) >= 3, seen


def test_corrupt_bundle_is_refused(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CURRENT pointing to a bundle with a flipped byte: reload refused (409), the previous
    bundle keeps serving under load, /readyz stays ok, the reason is in the log and /metrics."""
    good = store_mod.current_version(store)
    caplog.set_level(logging.ERROR, logger="app")
    with (
        LiveServer(make_settings(store)) as srv,
        LoadThread(srv.url, recommend_mix, clients=3) as load,
    ):
        time.sleep(0.5)
        bad = clone_version(store)
        weights = store / bad / "model.safetensors"
        raw = bytearray(weights.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        weights.write_bytes(bytes(raw))
        assert store_mod.current_version(store) == bad
        r = httpx.post(f"{srv.url}/admin/reload", headers=AUTH, timeout=60)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "reload_refused"
        assert bad in error["message"] and good in error["message"]
        time.sleep(0.5)
        ready = httpx.get(f"{srv.url}/readyz", timeout=10)
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
    assert ready.status_code == 200 and ready.json()["model_version"] == good
    failures = load.failures()
    assert not failures, failures[:5]
    versions = {
        str(o.body.get("model_version"))
        for o in load.outcomes
        if o.body and "model_version" in o.body
    }
    assert versions == {good}
    assert metric(metrics, "fusionrec_reloads_total", result="refused") == 1
    info = [
        line for line in metrics.splitlines() if line.startswith("fusionrec_reload_refused_info{")
    ]
    assert info and bad in info[0] and "BundleIntegrityError" in info[0], info
    logged = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
    assert any(bad in m and "model.safetensors" in m for m in logged), logged
