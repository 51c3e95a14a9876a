"""Event ingestion: sustained events/s and latency of POST /v1/events with the event log in
SQLite, in PostgreSQL and off, side by side (not a test).

    python bench/events.py --store /tmp/mlstore [--duration 8] [--concurrency 32] [--rounds 3]
        [--batch 100]

With ``--batch N`` every request is ``POST /v1/events:batch`` with N events, and the
figures are events/s (requests/s × N) and the latency of a batch.

Three servers (``uvicorn --factory app.main:app_from_env``, rate limit off, in-process
history) differ only in ``FUSIONREC_EVENTS_URL``: ``off``, a SQLite file (WAL, synchronous
FULL) and a throw-away PostgreSQL server started here (Debian's postgresql, as the tests
do). Each round saturates every server in turn with ``--concurrency`` closed-loop
keep-alive clients (bench/serve.py's client), then a fixed-rate case at ``--rate``; the
table reports each server's median round and the throughput ratio to ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
from pathlib import Path

from serve import ROOT, Server, ensure_bundle, fixed_rate, saturate

sys.path.insert(0, str(ROOT))
from tests.helpers.postgres import PostgresServer


def body_for(items: list[str], batch: int = 0) -> object:
    rng = random.Random(0)

    def event(i: int) -> dict[str, str]:
        return {"user_id": f"bench-{i % 5000}", "item_id": rng.choice(items), "type": "click"}

    def body(i: int) -> bytes:
        if batch:
            return json.dumps({"events": [event(i * batch + k) for k in range(batch)]}).encode()
        return json.dumps(event(i)).encode()

    return body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "movielens-100k")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="events per POST /v1/events:batch")
    args = ap.parse_args()
    path = "/v1/events:batch" if args.batch else "/v1/events"
    per = max(1, args.batch)
    ensure_bundle(args.store, args.data)
    from model_store.bundle.io import read_items

    items = read_items(args.store)["item_id"].astype(str).tolist()
    body = body_for(items, args.batch)
    pg = PostgresServer()
    pg.start()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fusionrec-bench-events-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    base = {
        "FUSIONREC_STORE": str(args.store),
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_FOLLOW_POLL_S": "0",
        "FUSIONREC_DEVICE": "cpu",
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
    }
    cases = {
        "off": "off",
        "sqlite": f"sqlite:///{work}/events.db",
        "postgresql": pg.url,
    }
    servers = {
        name: Server("app.main:app_from_env", {**base, "FUSIONREC_EVENTS_URL": url}, ROOT)
        for name, url in cases.items()
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {"saturated": [], "fixed": []} for n in servers
    }
    try:
        for s in servers.values():
            s.wait()
        for _ in range(args.rounds):
            for name, s in servers.items():
                results[name]["saturated"].append(
                    asyncio.run(saturate(s.port, path, body, args.concurrency, args.duration))
                )
                results[name]["fixed"].append(
                    asyncio.run(fixed_rate(s.port, path, body, args.rate, args.duration))
                )
    finally:
        for s in servers.values():
            s.stop()
        pg.remove()

    def med(name: str, case: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][case])

    print(
        f"# bench/events.py — {dt.date.today()} — {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.rounds} rounds × {args.duration:.0f} s, concurrency {args.concurrency}, "
        f"{f'batches of {args.batch} events' if args.batch else 'single events'}"
    )
    print()
    print(
        "| event log | saturated events/s | × off | p50 ms | p99 ms | errors "
        f"| p99 ms at {args.rate:.0f} requests/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    off = med("off", "saturated", "rps") * per
    for name in servers:
        rps = med(name, "saturated", "rps") * per
        errors = sum(r["errors"] for r in results[name]["saturated"] + results[name]["fixed"])
        print(
            f"| {name} | {rps:.0f} | {rps / off:.2f} | {med(name, 'saturated', 'p50_ms'):.1f} "
            f"| {med(name, 'saturated', 'p99_ms'):.1f} | {errors} "
            f"| {med(name, 'fixed', 'p99_ms'):.1f} |"
        )


if __name__ == "__main__":
    main()
