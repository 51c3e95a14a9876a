"""Load test of the service against a real uvicorn: latency and throughput per endpoint.

    python bench/serve.py --store /tmp/mlstore [--duration 8] [--rate 100] [--connections 4,32]

Starts ``uvicorn --factory app.main:app_from_env`` twice on the same bundle, with the
fusion head forced on and off (``FUSIONREC_RERANK``), and a bare FastAPI JSON endpoint
under the same uvicorn settings as the framework's ceiling, in the same run. The load
generator is a small asyncio HTTP/1.1 keep-alive client in this process (lighter than httpx,
so more of the 2 cores go to the server). Saturated cases (``--connections`` closed-loop
clients each): bare; /v1/recommend cache hits (warmed user ids) and misses (a fresh random
history per request), head on and off; they alternate for ``--rounds`` rounds and each
reports its median round. Fixed-rate cases (open loop at ``--rate``, latency from the
scheduled send time, so queueing counts): /v1/search dense vs hybrid, /v1/recommend
unfiltered vs filtered (release year ≥ 1995). If the store has no bundle, one is trained on
MovieLens-100k first.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bare_app() -> Any:
    """The framework's ceiling: one JSON endpoint, no work (served with --factory)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/recommend")
    async def recommend(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_version": "bare",
            "strategy": "cold_start",
            "items": [{"item_id": str(i), "score": 1.0} for i in range(10)],
            "unknown_items": [],
        }

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_bundle(store: Path, data: Path) -> None:
    if (store / "CURRENT").exists():
        return
    if not (data / "interactions.csv").exists() and not (data / "interactions.parquet").exists():
        subprocess.run(["fusionrec", "data", "movielens-100k", "--out", str(data)], check=True)
    subprocess.run(
        ["fusionrec", "train", "--data", str(data), "--store", str(store), "--epochs", "5"],
        check=True,
    )


class Server:
    def __init__(self, target: str, env: dict[str, str], app_dir: Path) -> None:
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--app-dir",
            str(app_dir),
        ]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT)

    def wait(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ---- a minimal keep-alive HTTP/1.1 client -------------------------------------------------


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return status


Body = Callable[[int], bytes]


async def fixed_rate(
    port: int,
    path: str,
    body: Body,
    rate: float,
    duration: float,
) -> dict[str, float]:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(Conn(port))
    lat: list[float] = []
    errors = 0
    n = int(rate * duration)
    t0 = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        conn = await pool.get()
        try:
            status = await conn.post(path, body(i))
            errors += status != 200
        finally:
            pool.put_nowait(conn)
        lat.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return summarise(lat, elapsed, errors)


async def saturate(
    port: int,
    path: str,
    body: Body,
    concurrency: int,
    duration: float,
) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal errors
        conn = Conn(port)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status = await conn.post(path, body(next(counter)))
            lat.append(time.perf_counter() - t)
            errors += status != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarise(lat, time.perf_counter() - t0, errors)


def summarise(lat: list[float], elapsed: float, errors: int) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {
        "requests": len(a),
        "errors": errors,
        "rps": len(a) / elapsed,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def bodies(store: Path, data: Path, seed: int = 0) -> dict[str, Body]:
    import pandas as pd

    from model_store.bundle.store import current_version

    version = store / current_version(store)
    items = pd.read_parquet(version / "items.parquet")
    ids = items["item_id"].astype(str).tolist()
    # raw ids of trained shoppers: the bundle's histories are keyed by their hashes
    csv = data / "interactions.csv"
    frame = pd.read_csv(csv) if csv.exists() else pd.read_parquet(data / "interactions.parquet")
    users = frame["user_id"].astype(str).drop_duplicates().tolist()
    titles = items["title"].astype(str).tolist() if "title" in items else ids
    rng = random.Random(seed)
    warm = users[:200]
    # a filter that keeps about half of MovieLens (release year), else none
    flt = {"year": {"gte": 1995}} if "year" in items else None

    def hit(i: int) -> bytes:
        return json.dumps({"user_id": warm[i % len(warm)], "k": 10}).encode()

    def filtered(i: int) -> bytes:
        return json.dumps({"user_id": warm[i % len(warm)], "k": 10, "filter": flt}).encode()

    def miss(i: int) -> bytes:
        return json.dumps({"history": rng.sample(ids, 20), "k": 10}).encode()

    def search(mode: str) -> Body:
        def body(i: int) -> bytes:
            query = titles[rng.randrange(len(titles))]
            return json.dumps(
                {"query": query, "k": 10, "user_id": warm[i % len(warm)], "mode": mode}
            ).encode()

        return body

    return {
        "hit": hit,
        "miss": miss,
        "filtered": filtered,
        "search_dense": search("dense"),
        "search_hybrid": search("hybrid"),
    }


def median_round(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The round with the median throughput, plus every round's req/s."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[len(ordered) // 2], "rounds_rps": [round(r["rps"], 1) for r in runs]}


def ratios(c: dict[str, dict[str, Any]], connections: list[int], fixed: str) -> dict[str, float]:
    """Throughput against the bare route at each concurrency; p99 ratios at the fixed rate."""
    out: dict[str, float] = {}
    for conc in connections:
        bare = c["bare"][f"c{conc}"]["rps"]
        for name in ("hit_head_on", "miss_head_on", "hit_head_off", "miss_head_off"):
            out[f"{name}_vs_bare_c{conc}"] = c[name][f"c{conc}"]["rps"] / bare
    p99 = {name: c[name][fixed]["p99_ms"] for name in c if fixed in c[name]}
    out["hybrid_vs_dense_p99"] = p99["search_hybrid"] / p99["search_dense"]
    out["filtered_vs_unfiltered_p99"] = p99["recommend_filtered"] / p99["recommend_unfiltered"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("/tmp/mlstore"))
    p.add_argument("--data", type=Path, default=Path("/tmp/ml"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument(
        "--connections",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[4, 32],
        help="closed-loop client counts of the saturated cases (comma-separated)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds of the saturated cases (median reported)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    ensure_bundle(args.store, args.data)
    env = {
        "FUSIONREC_STORE": str(args.store),
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_DEVICE": "cpu",
    }
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(sys.argv),
        "cases": {},
    }
    # All servers up at once (an idle one costs nothing), so the saturated cases can
    # alternate round by round and machine drift hits each of them alike. The same bundle
    # with the fusion head forced on and off (FUSIONREC_RERANK).
    servers = {
        "bare": Server("serve:bare_app", {}, ROOT / "bench"),
        "head_on": Server("app.main:app_from_env", {**env, "FUSIONREC_RERANK": "on"}, ROOT),
        "head_off": Server("app.main:app_from_env", {**env, "FUSIONREC_RERANK": "off"}, ROOT),
    }
    try:
        for srv in servers.values():
            srv.wait()
        body = bodies(args.store, args.data)
        bare_body: Body = lambda i: b'{"k": 10}'  # noqa: E731
        # (name, server, path, body) of the saturated cases, at each concurrency
        sat_cases = [
            ("bare", "bare", "/v1/recommend", bare_body),
            ("hit_head_on", "head_on", "/v1/recommend", body["hit"]),
            ("miss_head_on", "head_on", "/v1/recommend", body["miss"]),
            ("hit_head_off", "head_off", "/v1/recommend", body["hit"]),
            ("miss_head_off", "head_off", "/v1/recommend", body["miss"]),
        ]
        fixed_cases = [
            ("search_dense", "head_on", "/v1/search", body["search_dense"]),
            ("search_hybrid", "head_on", "/v1/search", body["search_hybrid"]),
            ("recommend_unfiltered", "head_on", "/v1/recommend", body["hit"]),
            ("recommend_filtered", "head_on", "/v1/recommend", body["filtered"]),
        ]

        async def run_all() -> dict[str, dict[str, Any]]:
            for name in ("head_on", "head_off"):  # warm the hit users' cached vectors
                warm = Conn(servers[name].port)
                for i in range(200):
                    await warm.post("/v1/recommend", body["hit"](i))
            out: dict[str, dict[str, Any]] = {}
            for name, srv, path, make in fixed_cases:
                out[name] = {
                    f"fixed_{args.rate:g}": await fixed_rate(
                        servers[srv].port, path, make, args.rate, args.duration
                    )
                }
            for conc in args.connections:
                sat: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in sat_cases}
                for _ in range(args.rounds):
                    for name, srv, path, make in sat_cases:
                        sat[name].append(
                            await saturate(servers[srv].port, path, make, conc, args.duration)
                        )
                for name in sat:
                    out.setdefault(name, {})[f"c{conc}"] = median_round(sat[name])
            return out

        results["cases"] = asyncio.run(run_all())
    finally:
        for srv in servers.values():
            srv.stop()
    results["ratios"] = ratios(results["cases"], args.connections, f"fixed_{args.rate:g}")
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
