"""The feedback loop on MovieLens-100k, end to end (not a test).

    python bench/loop.py [--work /tmp/fusionrec-loop] [--epochs 40]

1. The ratings sorted by time are cut at 80 % and 90 %: A (oldest 80 %), B, C (newest 10 %).
2. A stale bundle is trained and indexed on A; A is imported into a SQLite event log (the
   history an operator starts from).
3. A real server (``uvicorn --factory app.main:app_from_env``) takes B through
   ``POST /v1/events``, one request per event, in time order.
4. ``fusionrec retrain``'s code path (``fusionrec.retrain.retrain``) trains on the log
   (A + B) through the gate and publishes.
5. Both bundles rank C: each user with ratings in C and before contributes their first
   rating in C, with all their earlier ratings as history. Per-user NDCG@10 / Recall@20,
   the paired bootstrap interval of retrained − stale.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from serve import ROOT, Server

sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/fusionrec-loop"))
    ap.add_argument("--epochs", type=int, default=None, help="cap on training epochs")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    from fusionrec.retrain import Holdout, per_user_ndcg, retrain
    from indexer.publish import index_bundle
    from model_store.bundle.io import load_bundle
    from model_store.config import Config
    from model_store.data import movielens
    from model_store.data.dataset import load_dataset
    from model_store.evaluation.stats import paired_bootstrap, per_user
    from model_store.events.log import Event, EventStore
    from model_store.privacy import keys as private
    from model_store.training.pipeline import train_and_publish

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "ml"
    if not (data_dir / "interactions.csv").exists():
        movielens.write_dataset(movielens.fetch_raw(movielens.default_cache_dir()), data_dir)
    ds = load_dataset(data_dir)
    inter = ds.interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    a_end, b_end = int(len(inter) * 0.8), int(len(inter) * 0.9)
    part_a, part_b, part_c = inter.iloc[:a_end], inter.iloc[a_end:b_end], inter.iloc[b_end:]

    cfg = Config.from_dict({"train": {"epochs": args.epochs}} if args.epochs else {})
    store = work / f"store-{uuid.uuid4().hex[:6]}"
    a_dir = work / "a"
    a_dir.mkdir(exist_ok=True)
    part_a[["user_id", "item_id", "timestamp"]].to_csv(a_dir / "interactions.csv", index=False)
    ds.items.to_csv(a_dir / "items.csv", index=False)
    t0 = time.perf_counter()
    train_and_publish(load_dataset(a_dir), cfg, store, cache_dir=movielens.default_cache_dir())
    index_bundle(store)
    stale_seconds = time.perf_counter() - t0
    stale = load_bundle(store)

    url = f"sqlite:///{work}/events-{uuid.uuid4().hex[:6]}.db"
    key = private.user_key(store)  # the store's user-id key, as the service hashes with it
    log = EventStore(url)
    log.insert(
        [
            Event(uuid.uuid4().hex, private.user_hash(str(u), key), str(i), "view", 1.0, float(t))
            for u, i, t in zip(
                part_a["user_id"], part_a["item_id"], part_a["timestamp"], strict=True
            )
        ]
    )

    env = {
        "FUSIONREC_STORE": str(store),
        "FUSIONREC_EVENTS_URL": url,
        "FUSIONREC_RATE_LIMIT_RPS": "0",
        "FUSIONREC_FOLLOW_POLL_S": "0",
        "FUSIONREC_DEVICE": "cpu",
        "FUSIONREC_ALLOW_ANONYMOUS_WRITES": "true",
    }
    server = Server("app.main:app_from_env", env, ROOT)
    server.wait()
    rows = list(zip(part_b["user_id"], part_b["item_id"], part_b["timestamp"], strict=True))

    async def replay() -> tuple[int, float]:
        ok = 0
        queue: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
        for r in rows:
            queue.put_nowait((str(r[0]), str(r[1]), float(r[2])))

        async def worker(c: httpx.AsyncClient) -> None:
            nonlocal ok
            while not queue.empty():
                u, i, t = queue.get_nowait()
                r = await c.post("/v1/events", json={"user_id": u, "item_id": i, "timestamp": t})
                ok += r.status_code == 200

        t = time.perf_counter()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as c:
            await asyncio.gather(*(worker(c) for _ in range(args.concurrency)))
        return ok, time.perf_counter() - t

    try:
        accepted, replay_s = asyncio.run(replay())
    finally:
        server.stop()
    logged = log.count()

    t0 = time.perf_counter()
    decision = retrain(store, url, cfg, cache_dir=movielens.default_cache_dir())
    retrain_seconds = time.perf_counter() - t0
    fresh = load_bundle(store)

    seen: dict[str, list[str]] = {}
    for u, i in zip(inter.iloc[:b_end]["user_id"], inter.iloc[:b_end]["item_id"], strict=True):
        seen.setdefault(str(u), []).append(str(i))
    first_c = part_c.drop_duplicates("user_id", keep="first")
    users, hists, targets = [], [], []
    for u, i in zip(first_c["user_id"], first_c["item_id"], strict=True):
        if str(u) in seen:
            users.append(str(u))
            hists.append(seen[str(u)])
            targets.append(str(i))
    held = Holdout(float(part_c["timestamp"].min()), users, hists, targets)

    def ranks(bundle: object) -> np.ndarray:
        return per_user_ndcg(bundle, held)  # type: ignore[arg-type]

    stale_ndcg, fresh_ndcg = ranks(stale), ranks(fresh)
    diff = paired_bootstrap(fresh_ndcg, stale_ndcg)

    def recall20(bundle: object) -> np.ndarray:
        from model_store.model.scoring import EvalSet, rank_targets

        index = bundle.index_of()  # type: ignore[attr-defined]
        r = np.full(len(users), np.inf)
        keep = [k for k, t in enumerate(targets) if t in index]
        got, _ = rank_targets(
            bundle.model,  # type: ignore[attr-defined]
            EvalSet(
                [[index[i] for i in hists[k] if i in index] for k in keep],
                [index[targets[k]] for k in keep],
            ),
        )
        r[np.asarray(keep)] = got
        return per_user(r, "recall@20")

    stale_r, fresh_r = recall20(stale), recall20(fresh)
    diff_r = paired_bootstrap(fresh_r, stale_r)
    print(
        f"# bench/loop.py — {dt.date.today()} — {platform.machine()}, {os.cpu_count()} cores; "
        f"MovieLens-100k by time: A {len(part_a)}, B {len(part_b)}, C {len(part_c)} ratings"
    )
    print()
    print(
        f"replay of B through /v1/events: {accepted}/{len(rows)} answered 200 in {replay_s:.1f} s "
        f"({accepted / replay_s:.0f} events/s, {args.concurrency} clients); log holds {logged}"
    )
    g = decision.gate
    assert g is not None
    print(
        f"gate: {'published' if decision.published else 'refused'}; candidate NDCG@10 "
        f"{g.candidate:.4f} vs CURRENT {g.current:.4f} on {g.users} users "
        f"(diff {g.diff_mean:+.4f} [{g.diff_lo:+.4f}, {g.diff_hi:+.4f}]); "
        f"stale trained in {stale_seconds:.0f} s, retrain took {retrain_seconds:.0f} s"
    )
    print()
    print(
        f"| on C ({len(users)} users) | stale (A) | retrained (A+B) | retrained − stale [95% CI] |"
    )
    print("|---|---:|---:|---|")
    print(f"| NDCG@10 | {stale_ndcg.mean():.4f} | {fresh_ndcg.mean():.4f} | {diff} |")
    print(f"| Recall@20 | {stale_r.mean():.4f} | {fresh_r.mean():.4f} | {diff_r} |")
    (work / "loop.json").write_text(
        json.dumps(
            {
                "stale_ndcg": stale_ndcg.mean(),
                "fresh_ndcg": fresh_ndcg.mean(),
                "published": decision.published,
            }
        )
    )


if __name__ == "__main__":
    main()
