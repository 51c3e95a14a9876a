"""Load test of the service against a real uvicorn: latency and throughput per endpoint.

    python bench/serve.py --store /tmp/mlstore [--duration 8] [--rate 100] [--concurrency 32]

Starts ``uvicorn --factory app.main:app_from_env`` in a subprocess (rate limit off), and a
bare FastAPI JSON endpoint under the same uvicorn settings as the framework's ceiling. The
load generator is a small asyncio HTTP/1.1 keep-alive client in this process (lighter than
httpx, so more of the 2 cores go to the server). Each case runs at a fixed rate (open loop,
latency measured from the scheduled send time, so queueing counts) and at saturation
(``--concurrency`` closed-loop clients). Cases: bare endpoint; /v1/recommend cache hits
(warmed user ids); cache misses (a fresh random history per request); /v1/search; and the
saturated miss case again with micro-batching off (FUSIONREC_BATCH_MAX_SIZE=1). The three
servers run side by side and the saturated cases alternate for ``--rounds`` rounds; each
reports its median round, so the ratios compare figures measured under the same load.
If the store has no bundle, one is trained on MovieLens-100k first.
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

    def hit(i: int) -> bytes:
        return json.dumps({"user_id": warm[i % len(warm)], "k": 10}).encode()

    def miss(i: int) -> bytes:
        return json.dumps({"history": rng.sample(ids, 20), "k": 10}).encode()

    def search(i: int) -> bytes:
        return json.dumps(
            {"query": titles[rng.randrange(len(titles))], "k": 10, "user_id": warm[i % len(warm)]}
        ).encode()

    return {"hit": hit, "miss": miss, "search": search}


def median_round(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The round with the median throughput, plus every round's req/s."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[len(ordered) // 2], "rounds_rps": [round(r["rps"], 1) for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("/tmp/mlstore"))
    p.add_argument("--data", type=Path, default=Path("/tmp/ml"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--concurrency", type=int, default=32)
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
    # All three servers up at once (an idle one costs nothing), so the saturated cases can
    # alternate round by round and machine drift hits each of them alike.
    servers = {
        "bare": Server("serve:bare_app", {}, ROOT / "bench"),
        "batch64": Server("app.main:app_from_env", {**env, "FUSIONREC_BATCH_MAX_SIZE": "64"}, ROOT),
        "batch1": Server("app.main:app_from_env", {**env, "FUSIONREC_BATCH_MAX_SIZE": "1"}, ROOT),
    }
    try:
        for srv in servers.values():
            srv.wait()
        body = bodies(args.store, args.data)
        bare_body: Body = lambda i: b'{"k": 10}'  # noqa: E731
        # (name, server, path, body) of every case; the fixed-rate ones run once
        cases = [
            ("bare", "bare", "/v1/recommend", bare_body),
            ("hit", "batch64", "/v1/recommend", body["hit"]),
            ("miss", "batch64", "/v1/recommend", body["miss"]),
            ("search", "batch64", "/v1/search", body["search"]),
            ("miss_batch1", "batch1", "/v1/recommend", body["miss"]),
        ]

        async def run_all() -> dict[str, dict[str, Any]]:
            for name in ("batch64", "batch1"):  # warm the hit users' cached vectors
                warm = Conn(servers[name].port)
                for i in range(200):
                    await warm.post("/v1/recommend", body["hit"](i))
            out: dict[str, dict[str, Any]] = {name: {} for name, *_ in cases}
            for name, srv, path, make in cases[:4]:
                out[name]["fixed"] = await fixed_rate(
                    servers[srv].port, path, make, args.rate, args.duration
                )
            sat: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in cases}
            for _ in range(args.rounds):
                for name, srv, path, make in cases:
                    sat[name].append(
                        await saturate(
                            servers[srv].port, path, make, args.concurrency, args.duration
                        )
                    )
            for name in sat:
                out[name]["saturated"] = median_round(sat[name])
            return out

        results["cases"] = asyncio.run(run_all())
    finally:
        for srv in servers.values():
            srv.stop()
    c = results["cases"]
    bare_rps = c["bare"]["saturated"]["rps"]
    results["ratios"] = {
        "hit_vs_bare": c["hit"]["saturated"]["rps"] / bare_rps,
        "miss_vs_bare": c["miss"]["saturated"]["rps"] / bare_rps,
        "batching_miss_speedup": (
            c["miss"]["saturated"]["rps"] / c["miss_batch1"]["saturated"]["rps"]
        ),
    }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
