"""Hardening (issue 19) against real servers: durable, fleet-wide forgetting without
keyspace scans, keyed user hashes, the secure default for writes, failed-auth limits and
bounded histories, through a real uvicorn and a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import stat
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from app.keys import history_key
from fusionrec.forgotten import forgotten_users
from model_store.bundle import store as store_mod
from model_store.errors import DependencyError
from model_store.privacy import Forgotten
from model_store.privacy import keys as private
from model_store.privacy.keys import user_hash
from model_store.privacy.tombstones import (
    TOMBSTONES_FILE,
    TOMBSTONES_KEY,
    append_tombstone,
    tombstone_path,
)
from tests.helpers.bundles import a_trained_user, clone_version
from tests.helpers.servers import AUTH, LiveServer, RedisServer, make_settings, store_user_hash


def _a_user(store: Path) -> str:
    return a_trained_user(store)


def _strategy(url: str, user: str) -> str:
    r = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["strategy"])


def _redis(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)


def test_forget_survives_a_restart_embedded(store: Path) -> None:
    """Embedded default: the tombstone is on disk (0600) before the 204; a restarted server
    does not serve the bundle's history of the forgotten user."""
    user = _a_user(store)
    with LiveServer(make_settings(store)) as srv:
        assert _strategy(srv.url, user) == "personalized"
        assert httpx.delete(f"{srv.url}/v1/users/{user}", timeout=30).status_code == 204
        assert _strategy(srv.url, user) == "cold_start"
    tombstones = store / private.PRIVATE_DIR / TOMBSTONES_FILE
    assert tombstones.read_text().split() == [store_user_hash(store, user)]
    for f in (tombstones, store / private.PRIVATE_DIR / private.USER_KEY_FILE):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    with LiveServer(make_settings(store)) as srv:  # a restart: a new process state
        assert _strategy(srv.url, user) == "cold_start"
        # events after the forget start a new history (not seeded from the bundle)
        r = httpx.post(f"{srv.url}/v1/events", json={"user_id": user, "item_id": "i3"})
        assert r.status_code == 200 and r.json() == {"history_length": 1}


def test_delete_is_a_fixed_set_of_commands(store: Path, redis_server: RedisServer) -> None:
    """No SCAN/KEYS on a request path: DELETE costs the same few commands and stays fast
    whatever the number of unrelated keys (200,000 here)."""
    r = _redis(redis_server)
    try:
        for chunk in range(20):
            r.mset({f"fusionrec:other:{chunk}:{i}": b"x" for i in range(10_000)})
        with LiveServer(make_settings(store, redis_url=redis_server.url)) as srv:
            user = _a_user(store)
            httpx.post(f"{srv.url}/v1/events", json={"user_id": user, "item_id": "i1"})
            assert _strategy(srv.url, user) == "personalized"
            r.config_resetstat()
            t0 = time.perf_counter()
            assert httpx.delete(f"{srv.url}/v1/users/{user}", timeout=30).status_code == 204
            elapsed = time.perf_counter() - t0
            stats = r.info("commandstats")
    finally:
        r.close()
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats, stats
    calls = {
        k.removeprefix("cmdstat_"): v["calls"]
        for k, v in stats.items()
        if not k.startswith("cmdstat_config")
    }
    # SADD tombstone, DEL vector, DEL history, DEL negative feedback (dislikes)
    assert sum(calls.values()) <= 4, calls
    assert elapsed < 0.5, elapsed
    print(f"DELETE /v1/users with 200,000 unrelated keys: {elapsed * 1000:.1f} ms, {calls}")


def test_a_flood_of_fake_users_stays_under_maxmemory(redis_server: RedisServer) -> None:
    """Histories have a TTL, so under compose's volatile-lru a flood of fake users is
    evicted instead of failing writes with OOM: every event is accepted by Redis."""
    from app.history import LocalHistory, RedisHistory
    from app.redis_gateway import CircuitBreaker, RedisGateway

    r = _redis(redis_server)
    base = int(r.info("memory")["used_memory"])
    limit = base + (2 << 20)
    r.config_set("maxmemory", limit)
    r.config_set("maxmemory-policy", "volatile-lru")

    async def flood() -> tuple[int, int]:
        gateway = RedisGateway(redis_server.url, timeout_s=1.0, breaker=CircuitBreaker(1000, 1.0))
        history = RedisHistory(gateway, LocalHistory(20), 20, ttl_s=3600)
        try:
            for n in range(20_000):
                await history.append(f"{n:064x}", [f"i{n % 400}"] * 3, [])
            return gateway.errors, history.pending_users
        finally:
            await gateway.close()

    try:
        errors, pending = asyncio.run(flood())
        stats, memory = r.info("stats"), r.info("memory")
    finally:
        r.close()
    assert errors == 0 and pending == 0, (errors, pending)  # no OOM error, nothing queued
    assert int(stats["evicted_keys"]) > 0
    assert int(memory["used_memory"]) <= limit * 1.05


def test_user_ids_are_keyed_hashes(tmp_path: Path) -> None:
    key = private.user_key(tmp_path)
    assert private.user_key(tmp_path) == key  # generated once, then read back
    path = tmp_path / private.PRIVATE_DIR / private.USER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    unsalted = hashlib.sha256(b"user\x001").hexdigest()
    assert user_hash("1", key) != unsalted and len(user_hash("1", key)) == 64
    assert user_hash("1", key) != user_hash("1", private.user_key(tmp_path / "other"))
    configured = private.user_key(tmp_path, "a-configured-secret-0123")
    assert configured == b"a-configured-secret-0123" and user_hash("1", configured) != user_hash(
        "1", key
    )


def test_training_drops_forgotten_users() -> None:
    """By raw id (a dataset) or by hash (a dataset exported from the event log)."""
    key = b"k" * 32
    hashed = user_hash("d", key)
    frame = pd.DataFrame(
        {"user_id": ["a", "a", "b", "c", hashed], "item_id": ["1", "2", "1", "3", "4"]}
    )
    forgotten = Forgotten(frozenset({user_hash("a", key), hashed, "f" * 64}), key)
    kept, dropped = forgotten.drop(frame)
    assert dropped == 2 and kept["user_id"].tolist() == ["b", "c"]


def test_training_reads_the_tombstones_of_both_setups(
    store: Path, redis_server: RedisServer
) -> None:
    """What the next training drops: the store's tombstone file and the Redis set."""
    append_tombstone(tombstone_path(store), "a" * 64)
    r = _redis(redis_server)
    try:
        r.sadd(TOMBSTONES_KEY, "b" * 64)
    finally:
        r.close()
    got = forgotten_users(store, redis_url=redis_server.url, user_key_secret=None)
    assert got.hashes == {"a" * 64, "b" * 64} and got.key == private.user_key(store)
    assert forgotten_users(store, redis_url=None, user_key_secret=None).hashes == {"a" * 64}
    redis_server.stop()
    with pytest.raises(DependencyError, match="refusing to train"):
        forgotten_users(store, redis_url=redis_server.url, user_key_secret=None)


def test_writes_need_a_key_by_default(store: Path) -> None:
    """The secure default: without FUSIONREC_API_KEYS writes naming a user are refused
    unless the operator opts out; reads still work."""
    user = _a_user(store)
    with LiveServer(make_settings(store, allow_anonymous_writes=False)) as srv:
        r = httpx.post(f"{srv.url}/v1/events", json={"user_id": user, "item_id": "i1"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "api_key_required"
        assert "FUSIONREC_ALLOW_ANONYMOUS_WRITES" in r.json()["error"]["message"]
        r = httpx.delete(f"{srv.url}/v1/users/{user}")
        assert r.status_code == 403
        assert _strategy(srv.url, user) == "personalized"  # nothing was erased
    with LiveServer(make_settings(store, allow_anonymous_writes=False, api_keys="k1")) as srv:
        body = {"user_id": user, "item_id": "i1"}
        assert httpx.post(f"{srv.url}/v1/events", json=body).status_code == 401
        ok = httpx.post(f"{srv.url}/v1/events", json=body, headers={"X-API-Key": "k1"})
        assert ok.status_code == 200


def test_failed_credentials_are_rate_limited(store: Path) -> None:
    settings = make_settings(store, api_keys="right-key", auth_fail_rps=0.01, auth_fail_burst=3)
    with LiveServer(settings) as srv:
        wrong = {"X-API-Key": "guess"}
        codes = [
            httpx.post(f"{srv.url}/v1/recommend", json={}, headers=wrong).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        r = httpx.post(f"{srv.url}/v1/recommend", json={}, headers={"X-API-Key": "right-key"})
        # while locked out, keys are not even compared (no oracle for guesses)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        bad = {"Authorization": "Bearer not-the-admin-token-at-all"}
        admin = [httpx.post(f"{srv.url}/admin/reload", headers=bad).status_code for _ in range(4)]
        assert admin == [401, 401, 401, 429]


def test_write_back_queue_is_bounded(store: Path, redis_server: RedisServer) -> None:
    """Redis down: events of up to FUSIONREC_HISTORY_MAX_PENDING_USERS users are accepted
    and queued; one more user is answered 503 with Retry-After (not dropped silently)."""
    settings = make_settings(
        store,
        redis_url=redis_server.url,
        redis_timeout_s=0.05,
        breaker_failures=1,
        breaker_reset_s=30,
        history_max_pending_users=2,
    )
    with LiveServer(settings) as srv:
        redis_server.stop()
        for user in ("queued-1", "queued-2", "queued-1"):
            r = httpx.post(f"{srv.url}/v1/events", json={"user_id": user, "item_id": "i1"})
            assert r.status_code == 200, r.text
        r = httpx.post(f"{srv.url}/v1/events", json={"user_id": "queued-3", "item_id": "i1"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "FUSIONREC_HISTORY_MAX_PENDING_USERS" in r.json()["error"]["message"]


def test_histories_expire_in_redis(store: Path, redis_server: RedisServer) -> None:
    settings = make_settings(store, redis_url=redis_server.url, history_ttl_s=120)
    with LiveServer(settings) as srv:
        httpx.post(f"{srv.url}/v1/events", json={"user_id": "ttl-user", "item_id": "i1"})
    r = _redis(redis_server)
    try:
        ttl = r.ttl(history_key(store_user_hash(store, "ttl-user")))
    finally:
        r.close()
    assert 0 < ttl <= 120


def test_local_history_ttl_and_byte_budget() -> None:
    from app.history import LocalHistory

    async def scenario() -> None:
        h = LocalHistory(5, ttl_s=0.05)
        await h.append("u", ["a"], [])
        assert await h.get("u") == ["a"]
        await asyncio.sleep(0.06)
        assert await h.get("u") is None
        budget = LocalHistory(200, max_bytes=1 << 20)
        for n in range(10_000):
            await budget.append(f"user-{n}", [f"item-{n}"] * 5, [])
        assert budget.bytes <= 1 << 20 and 0 < len(budget) < 10_000
        assert await budget.get("user-9999") is not None and await budget.get("user-0") is None

    asyncio.run(scenario())


def test_local_cache_byte_budget() -> None:
    from app.vector_cache import LocalLRU

    lru = LocalLRU(size=1_000_000, ttl_s=100, max_bytes=1 << 20)
    for n in range(10_000):
        lru.set(f"k{n}", b"v" * 1024)
    assert lru.bytes <= 1 << 20 and len(lru) < 1000
    assert lru.get("k9999") is not None and lru.get("k0") is None


def _outside_copy(store: Path, tmp_path: Path) -> Path:
    """A complete, valid bundle directory outside the store."""
    outside = tmp_path / "outside"
    outside.mkdir()
    current = store / store_mod.current_version(store)
    target = outside / current.name
    shutil.copytree(current, target)
    return target


def test_current_outside_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    """CURRENT naming a path outside the store (relative, or a symlinked version), or a
    manifest listing a file outside its version: 409 on reload, exit 2 on the CLI."""
    from typer.testing import CliRunner

    from fusionrec.cli.main import build

    serving = store_mod.current_version(store)
    outside = _outside_copy(store, tmp_path)
    (store / "vlink").symlink_to(outside, target_is_directory=True)
    remove = ["index", "remove", "--store", str(store), "--ids", "i1"]
    with LiveServer(make_settings(store)) as srv:
        for pointer in (f"../outside/{outside.name}", str(outside), "vlink"):
            (store / "CURRENT").write_text(pointer + "\n")
            r = httpx.post(f"{srv.url}/admin/reload", headers=AUTH, timeout=30)
            assert r.status_code == 409, (pointer, r.text)
            assert "inside" in r.json()["error"]["message"]
            assert httpx.get(f"{srv.url}/readyz").json()["model_version"] == serving
            res = CliRunner().invoke(
                build(), ["index", "remove", "--store", str(store), "--ids", "i1"]
            )
            assert res.exit_code == 2, res.output
            assert "inside" in res.output and "Traceback" not in res.output
        # a manifest that lists a file outside its version directory
        (store / "CURRENT").write_text(serving + "\n")
        version = clone_version(store)
        manifest = json.loads((store / version / "manifest.json").read_text())
        secret = tmp_path / "outside-secret.bin"
        secret.write_bytes(b"not part of any bundle")
        digest = hashlib.sha256(secret.read_bytes()).hexdigest()
        manifest["files"]["../../outside-secret.bin"] = digest
        (store / version / "manifest.json").write_text(json.dumps(manifest))
        r = httpx.post(f"{srv.url}/admin/reload", headers=AUTH, timeout=30)
        assert r.status_code == 409 and "outside-secret.bin" in r.json()["error"]["message"]
        res = CliRunner().invoke(build(), remove)
        assert res.exit_code == 2 and "inside" in res.output, res.output


def test_no_secrets_or_paths_in_messages(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings, settings_error_message

    with pytest.raises(ValidationError) as caught:
        Settings(
            store=tmp_path,
            admin_token="hunter2-short",
            redis_url="http://user:hunter2-pass@redis:6379/0",
            user_key_secret="hunter2",
        )
    message = settings_error_message(caught.value)
    assert "hunter2" not in message
    for var in ("FUSIONREC_ADMIN_TOKEN", "FUSIONREC_REDIS_URL", "FUSIONREC_USER_KEY_SECRET"):
        assert var in message
    # `fusionrec serve` with a bad secret: exit 2, the variable named, the value not shown
    from typer.testing import CliRunner

    from fusionrec.cli.main import build

    res = CliRunner().invoke(
        build(),
        ["serve", "--store", str(tmp_path)],
        env={"FUSIONREC_ADMIN_TOKEN": "hunter2-short", "REDIS_URL": "redis://:pw-hunter2@h:1/0x"},
    )
    assert res.exit_code == 2 and "FUSIONREC_ADMIN_TOKEN" in res.output
    assert "hunter2" not in res.output
    # unauthenticated /readyz (not ready) and /metrics show no server directories
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with LiveServer(make_settings(empty)) as srv:
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and "CURRENT" in r.json()["error"]["message"]
        assert str(tmp_path) not in r.text
        assert str(tmp_path) not in httpx.get(f"{srv.url}/metrics").text


def test_serve_warns_when_exposed_without_keys(tmp_path: Path) -> None:
    from fusionrec.cli.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.0.0.5")


def test_failed_auth_limit_is_per_client_behind_a_trusted_proxy(store: Path) -> None:
    """With the proxy trusted, one client's failures do not lock out another client."""
    settings = make_settings(
        store,
        api_keys="right-key",
        auth_fail_rps=0.01,
        auth_fail_burst=2,
        forwarded_allow_ips="127.0.0.1",
    )
    with LiveServer(settings) as srv:

        def post(client: str, key: str) -> int:
            headers = {"X-API-Key": key, "X-Forwarded-For": client}
            return httpx.post(f"{srv.url}/v1/recommend", json={}, headers=headers).status_code

        assert [post("203.0.113.7", "guess") for _ in range(3)] == [401, 401, 429]
        assert post("198.51.100.9", "right-key") == 200


def test_train_command_drops_the_users_forgotten_in_either_record(
    store: Path, tiny_dataset: Path, redis_server: RedisServer
) -> None:
    """`fusionrec train` is handed the forgotten users (the store's file, and the Redis set
    named by --redis-url); the new bundle holds no history of either."""
    from typer.testing import CliRunner

    from fusionrec.cli.main import build

    users = pd.read_csv(tiny_dataset / "interactions.csv", dtype=str)["user_id"].unique()
    in_file, in_redis, kept = str(users[0]), str(users[1]), str(users[2])
    append_tombstone(tombstone_path(store), store_user_hash(store, in_file))
    r = _redis(redis_server)
    try:
        r.sadd(TOMBSTONES_KEY, store_user_hash(store, in_redis))
    finally:
        r.close()
    args = ["train", "--data", str(tiny_dataset), "--store", str(store), "--epochs", "1"]
    res = CliRunner().invoke(build(), [*args, "--redis-url", redis_server.url])
    assert res.exit_code == 0, res.output
    hist = pd.read_parquet(store / store_mod.current_version(store) / "histories.parquet")
    trained = set(hist["user_id"].astype(str))
    assert store_user_hash(store, kept) in trained
    assert store_user_hash(store, in_file) not in trained
    assert store_user_hash(store, in_redis) not in trained
