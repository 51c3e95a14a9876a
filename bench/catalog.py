"""Catalog writes as rows (issue 28): latency of an upsert and of a PATCH of `available`,
and the time until the other replica shows the change, on two server processes (not a
test).

    python bench/catalog.py --store /tmp/mlstore [--writes 100] [--backends sqlite,postgresql]

For each backend two servers (``uvicorn --factory app.main:app_from_env``) share a copy of
the store and the catalog table: ``sqlite`` — the store's embedded SQLite file, no Redis
(replicas learn of changes by their 0.5 s poll); ``postgresql`` — a throw-away PostgreSQL
and redis-server started here (pub/sub wakes the other replica). One admin client writes
on replica A, one at a time: ``--writes`` one-item upserts (new items, text encoded on A),
then as many PATCHes of ``available``; after each 200 it polls replica B's
``GET /v1/items/{id}`` every 5 ms until B shows the change. The store's size before and
after (bundles + database) shows that changes grow the rows, not bundle copies.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx
from serve import ROOT, Server, ensure_bundle

sys.path.insert(0, str(ROOT))
from tests.helpers.postgres import PostgresServer
from tests.helpers.servers import RedisServer

TOKEN = "bench-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def seen(b: httpx.Client, item_id: str, want: bool | None) -> bool:
    r = b.get(f"/v1/items/{item_id}")
    if r.status_code != 200:
        return False
    return want is None or r.json()["fields"].get("available") is want


def one_write(
    a: httpx.Client,
    b: httpx.Client,
    method: str,
    path: str,
    body: object,
    item: str,
    want: bool | None,
) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = a.request(method, path, json=body, headers=AUTH)
    took = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
    t1 = time.perf_counter()
    while not seen(b, item, want):
        if time.perf_counter() - t1 > 30:
            raise RuntimeError(f"{item} not visible on the other replica after 30 s")
        time.sleep(0.005)
    return took * 1000, (time.perf_counter() - t1) * 1000


def run_backend(name: str, store: Path, writes: int, env: dict[str, str]) -> dict[str, object]:
    servers = [Server("app.main:app_from_env", env, ROOT) for _ in range(2)]
    try:
        for s in servers:
            s.wait()
        a = httpx.Client(base_url=f"http://127.0.0.1:{servers[0].port}", timeout=120)
        b = httpx.Client(base_url=f"http://127.0.0.1:{servers[1].port}", timeout=30)
        for c in (a, b):
            while c.get("/readyz").status_code != 200:
                time.sleep(0.2)
        before = size_mb(store)
        up, up_vis, patch, patch_vis = [], [], [], []
        for i in range(writes):
            item = {"item_id": f"bench-{name}-{i}", "title": f"Bench item {i} of the night"}
            t, v = one_write(a, b, "POST", "/v1/items", {"items": [item]}, item["item_id"], None)
            up.append(t)
            up_vis.append(v)
        for i in range(writes):
            item_id, flag = f"bench-{name}-{i}", i % 2 == 1
            path = f"/v1/items/{item_id}"
            t, v = one_write(a, b, "PATCH", path, {"available": flag}, item_id, flag)
            patch.append(t)
            patch_vis.append(v)
        ready = b.get("/readyz").json()
        return {
            "backend": name,
            "upsert_p50": statistics.median(up),
            "upsert_p99": pct(up, 99),
            "patch_p50": statistics.median(patch),
            "patch_p99": pct(patch, 99),
            "visible_p50": statistics.median(up_vis + patch_vis),
            "visible_max": max(up_vis + patch_vis),
            "grew_mb": size_mb(store) - before,
            "seq": ready["catalog_seq"],
        }
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "movielens-100k")
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    ensure_bundle(args.store, args.data)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fusionrec-bench-catalog-{os.getpid()}"
    base = {
        "FUSIONREC_ADMIN_TOKEN": TOKEN,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_DEVICE": "cpu",
        "FUSIONREC_FOLLOW_POLL_S": "60",
    }
    rows = []
    try:
        for name in args.backends.split(","):
            store = work / name
            shutil.copytree(args.store, store, ignore=shutil.ignore_patterns("*.db*", "*spool*"))
            env = {**base, "FUSIONREC_STORE": str(store)}
            if name == "postgresql":
                pg, redis = PostgresServer(), RedisServer(work)
                pg.start()
                redis.start()
                env |= {"FUSIONREC_EVENTS_URL": pg.url, "FUSIONREC_REDIS_URL": redis.url}
                try:
                    rows.append(run_backend(name, store, args.writes, env))
                finally:
                    redis.stop()
                    pg.remove()
            else:
                rows.append(run_backend(name, store, args.writes, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.writes} one-item upserts then {args.writes} PATCHes of `available`, one "
        f"client on replica A; {platform.node()} ({os.cpu_count()} cores), "
        f"{dt.date.today().isoformat()}\n"
    )
    print(
        "| backend | upsert p50 / p99 ms | PATCH available p50 / p99 ms | "
        "visible on B p50 / max ms | store grew MB | catalog_seq |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['upsert_p50']:.1f} / {r['upsert_p99']:.1f} | "
            f"{r['patch_p50']:.1f} / {r['patch_p99']:.1f} | "
            f"{r['visible_p50']:.0f} / {r['visible_max']:.0f} | {r['grew_mb']:.2f} | {r['seq']} |"
        )


if __name__ == "__main__":
    main()
