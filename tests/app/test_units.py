"""Unit tests of the small service parts: breaker, rate limiter, LRU, log redaction, CLI."""

from __future__ import annotations

import logging
from pathlib import Path

from typer.testing import CliRunner

from app.deps import RateLimiter
from app.keys import history_hash, user_vector_key, vector_key
from app.middleware import RedactUserIds
from app.redis_gateway import CircuitBreaker
from app.vector_cache import LocalLRU
from model_store.privacy.keys import user_hash


def test_circuit_breaker_opens_and_probes() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=2, reset_s=5, clock=lambda: now[0])
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 6.0
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()
    assert b.state == "open"
    now[0] = 12.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_rate_limiter_buckets() -> None:
    limiter = RateLimiter(rate=1000.0, burst=2)
    assert limiter.take("a") is None and limiter.take("a") is None
    wait = limiter.take("a")
    assert wait is not None and 0 < wait <= 0.001 + 1e-6
    assert limiter.take("b") is None
    assert RateLimiter(rate=0, burst=1).take("x") is None


def test_lru_and_keys() -> None:
    lru = LocalLRU(size=2, ttl_s=100)
    lru.set("a", b"1")
    lru.set("b", b"2")
    lru.get("a")
    lru.set("c", b"3")
    assert lru.get("b") is None and lru.get("a") == b"1" and len(lru) == 2
    key = b"k" * 32
    assert "alice" not in user_vector_key(user_hash("alice", key))
    assert user_vector_key(user_hash("alice", key)).endswith(user_hash("alice", key))
    assert vector_key("v1", history=["a"]) != vector_key("v2", history=["a"])
    assert history_hash(["a", "b"]) != history_hash(["ab"])


def test_access_log_redacts_user_ids() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s"',
        ("127.0.0.1", "DELETE", "/v1/users/alice@example.com"),
        None,
    )
    RedactUserIds().filter(record)
    assert "alice" not in record.getMessage() and "/v1/users/<redacted>" in record.getMessage()


def test_serve_command_is_registered() -> None:
    from fusionrec.cli.main import build

    result = CliRunner().invoke(build(), ["serve", "--help"])
    assert result.exit_code == 0 and "--store" in result.output and "--workers" in result.output


def test_access_log_is_json_by_route_template_and_sampled() -> None:
    import json as json_mod

    from app.middleware import AccessLog

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep()
    log = AccessLog(1.0)
    log.log.addHandler(keep)
    try:
        log.record("GET", "/v1/users/{user_id}", 200, 0.0012)
        assert len(records) == 1
        line = json_mod.loads(records[0])
        assert line["route"] == "/v1/users/{user_id}" and line["status"] == 200
        assert line["method"] == "GET" and line["ms"] == 1.2
        rare = AccessLog(1e-12)
        for _ in range(100):
            rare.record("POST", "/v1/recommend", 200, 0.001)
        assert len(records) == 1  # sampled out
    finally:
        log.log.removeHandler(keep)


def test_access_log_is_off_by_default(tmp_path: Path) -> None:
    from app.settings import Settings

    assert Settings(store=tmp_path).http.access_log == "off"
