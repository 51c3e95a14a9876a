"""In-process profile of POST /v1/recommend: the ASGI app called directly (no socket, no
client), so the figures are the service's own CPU per request.

    python bench/serve_profile.py --store /tmp/mlstore [--n 2000] [--head auto|on|off]
        [--cprofile hit|miss] [--top 25]

Prints µs per request for a cache hit (a warmed user id), a cache miss (a fresh 20-item
history), the same with a filter, and a bare route through the same calling code; with
``--cprofile`` the cProfile top functions (by own time) of one case.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Body = Callable[[int], bytes]


async def call(app: Any, state: dict[str, Any], path: str, body: bytes) -> int:
    """One request through the ASGI app; → its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


def bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/recommend")
    async def recommend(body: dict[str, Any]) -> dict[str, Any]:
        items = [{"item_id": str(i), "score": 1.0} for i in range(10)]
        return {"model_version": "bare", "strategy": "cold_start", "items": items}

    return app


def bodies(store: Path) -> dict[str, Body]:
    import pandas as pd

    from model_store.bundle.store import current_version

    version = store / current_version(store)
    ids = pd.read_parquet(version / "items.parquet")["item_id"].astype(str).tolist()
    users = pd.read_parquet(version / "histories.parquet")["user_id"].astype(str).tolist()
    warm = users[:200]
    rng = random.Random(0)
    return {
        "bare": lambda i: b'{"k": 10}',
        "hit": lambda i: json.dumps({"user_id": warm[i % len(warm)], "k": 10}).encode(),
        "miss": lambda i: json.dumps({"history": rng.sample(ids, 20), "k": 10}).encode(),
    }


async def timed(app: Any, state: dict[str, Any], make: Body, n: int) -> float:
    for i in range(min(n, 200)):  # warm: the hit users' vectors cached, code paths traced
        assert await call(app, state, "/v1/recommend", make(i)) == 200
    reqs = [make(i) for i in range(n)]
    t = time.perf_counter()
    for body in reqs:
        await call(app, state, "/v1/recommend", body)
    return (time.perf_counter() - t) / n * 1e6


async def run(args: argparse.Namespace) -> None:
    from app.main import create_app
    from app.settings import Settings

    os.environ.update(FUSIONREC_STORE=str(args.store), FUSIONREC_RATE_LIMIT_RPS="0")
    os.environ.setdefault("FUSIONREC_DEVICE", "cpu")
    app = create_app(Settings())
    make = bodies(args.store)
    bare = bare_app()
    async with app.router.lifespan_context(app) as state:
        model = state["snapshots"].ready().bundle.model
        if args.head != "auto":
            model.use_head = args.head == "on"
        print(f"head in use: {model.use_head}")
        print(f"bare route: {await timed(bare, {}, make['bare'], args.n):.0f} µs/request")
        for case in ("hit", "miss"):
            print(f"{case}: {await timed(app, state, make[case], args.n):.0f} µs/request")
        if args.cprofile:
            await timed(app, state, make[args.cprofile], 200)
            prof = cProfile.Profile()
            prof.enable()
            await timed(app, state, make[args.cprofile], args.n)
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--head", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--cprofile", choices=("hit", "miss"), default=None)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=30)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
