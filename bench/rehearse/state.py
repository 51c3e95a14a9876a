"""The system's own state at the end of a run: the event log and catalog tables in the
database, the forgotten shoppers' keys in Redis, the store's versions and retrain
decisions, and each replica's /readyz and /metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from bench.rehearse import store as store_mod
from bench.rehearse.stack import Stack

EVENTS = "fusionrec_events"
CATALOG_ITEMS = "fusionrec_catalog_items"
CATALOG_STATE = "fusionrec_catalog_state"
QUARANTINE = "fusionrec_events_quarantine"
TOMBSTONES = "fusionrec:forgotten"


def user_hash(user_id: str, key: str) -> str:
    """The service's stored form of a user id (HMAC-SHA256 with the user key), computed
    here independently: a change of the rule shows up as shoppers missing from the log."""
    return hmac.new(key.encode(), b"user\0" + user_id.encode(), hashlib.sha256).hexdigest()


def redis_user_keys(uhash: str) -> list[str]:
    hist = f"fusionrec:hist:{uhash}"
    return [hist, f"fusionrec:hist:{uhash}:neg", f"fusionrec:uv:u:{uhash}"]


@dataclass
class Final:
    log_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    log_request_ids: dict[str, int] = field(default_factory=dict)  # request_id -> rows
    log_columns: list[str] = field(default_factory=list)
    log_users: set[str] = field(default_factory=set)  # user keys with rows
    log_error: str = ""
    catalog: dict[str, dict[str, Any]] | None = None  # item -> row; None: no table
    catalog_head: int | None = None
    quarantined: int | None = None
    redis_left: dict[str, list[str]] = field(default_factory=dict)  # user -> keys still there
    tombstoned: dict[str, bool] = field(default_factory=dict)
    redis_error: str = ""
    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    current: str = ""
    versions: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def read_log(engine: sa.Engine, keys: set[str], final: Final, since: float = 0.0) -> None:
    """The rows that arrived from ``since`` (unix seconds) on: the imported history (the
    same shoppers, arrived at setup) is not the traffic the checks account for."""
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        if not insp.has_table(EVENTS):
            final.log_error = f"no {EVENTS} table in the database"
            return
        cols = [c["name"] for c in insp.get_columns(EVENTS)]
        final.log_columns = cols
        rid = ", request_id" if "request_id" in cols else ""
        rows = conn.execute(
            sa.text(f"SELECT user_key, item_id, type{rid} FROM {EVENTS} WHERE received >= :t"),
            {"t": since},
        ).all()
        # every row counts for who still has events (a forgotten shopper's imported history
        # must be gone too)
        users = conn.execute(sa.text(f"SELECT DISTINCT user_key FROM {EVENTS}")).scalars()
        final.log_users = {u for u in users if u in keys}
        if insp.has_table(QUARANTINE):
            final.quarantined = int(
                conn.execute(sa.text(f"SELECT count(*) FROM {QUARANTINE}")).scalar_one()
            )
    for row in rows:
        if row[0] not in keys:
            continue
        final.log_counts[(row[0], row[1], row[2])] += 1
        if rid and row[3]:
            final.log_request_ids[row[3]] = final.log_request_ids.get(row[3], 0) + 1


def read_catalog(engine: sa.Engine, items: set[str], final: Final) -> None:
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        if not insp.has_table(CATALOG_ITEMS):
            return
        table = sa.Table(CATALOG_ITEMS, sa.MetaData(), autoload_with=conn)
        wanted = [c for c in table.c if c.name not in ("text_vec",)]
        rows = conn.execute(sa.select(*wanted).where(table.c.item_id.in_(sorted(items)))).mappings()
        final.catalog = {str(r["item_id"]): dict(r) for r in rows}
        if insp.has_table(CATALOG_STATE):
            seq = conn.execute(sa.text(f"SELECT max(seq) FROM {CATALOG_STATE}")).scalar_one()
            final.catalog_head = None if seq is None else int(seq)


def read_redis(url: str, users: dict[str, str], final: Final) -> None:
    try:
        r = redis.Redis.from_url(url, socket_timeout=5)
        for user, uhash in users.items():
            final.redis_left[user] = [k for k in redis_user_keys(uhash) if r.exists(k)]
            final.tombstoned[user] = bool(r.sismember(TOMBSTONES, uhash))
        r.close()
    except redis.RedisError as exc:
        final.redis_error = repr(exc)


def read_replicas(stack: Stack, final: Final) -> None:
    with httpx.Client(timeout=10) as client:
        for r in stack.replicas:
            try:
                resp = client.get(f"{r.url}/readyz")
                final.ready[r.name] = {"status_code": resp.status_code, **resp.json()}
            except (httpx.HTTPError, ValueError) as exc:
                final.ready[r.name] = {"status_code": 0, "error": repr(exc)}
            try:
                final.metrics[r.name] = client.get(f"{r.url}/metrics").text
            except httpx.HTTPError:
                final.metrics[r.name] = ""


def read_decisions(stack: Stack, final: Final) -> None:
    path = stack.store / "retrain.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                final.decisions.append(json.loads(line))
            except ValueError:
                continue


def read_all(stack: Stack, users: set[str], items: set[str], key: str, since: float = 0.0) -> Final:
    final = Final()
    hashes = {u: user_hash(u, key) for u in users}
    engine = sa.create_engine(stack.events_url, connect_args={"connect_timeout": 5})
    try:
        read_log(engine, set(hashes.values()), final, since)
        read_catalog(engine, items, final)
    except sa.exc.SQLAlchemyError as exc:
        final.log_error = f"cannot read the database: {str(exc).splitlines()[0][:200]}"
    finally:
        engine.dispose()
    read_replicas(stack, final)
    final.current = store_mod.current(stack.store)
    final.versions = store_mod.versions(stack.store)
    read_decisions(stack, final)
    return final


def settle(stack: Stack, timeout_s: float = 30.0) -> float:
    """Wait until the log's row count stops moving (spools written back); seconds waited."""
    engine = sa.create_engine(stack.events_url, connect_args={"connect_timeout": 5})
    t0, last, stable = time.monotonic(), -1, 0
    try:
        while time.monotonic() - t0 < timeout_s and stable < 3:
            try:
                with engine.connect() as conn:
                    n = int(conn.execute(sa.text(f"SELECT count(*) FROM {EVENTS}")).scalar_one())
            except sa.exc.SQLAlchemyError:
                n = -1
            stable = stable + 1 if n == last and n >= 0 else 0
            last = n
            time.sleep(1.0)
    finally:
        engine.dispose()
    return time.monotonic() - t0
