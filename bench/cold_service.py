"""Cold items through the running service (not a test): train with 10 % of the catalog held
out, serve, add the held-out items with ``POST /v1/items``, ask ``/v1/recommend``.

    python bench/cold_service.py [--cold-items 0.1] [--cold-seed 0] [--seed 0]
                                 [--config cfg.json] [--users 0]

Only the public interfaces: ``fusionrec train --cold-items`` on the MovieLens-100k training
data (train + valid of the peers' split), ``fusionrec index``, ``fusionrec serve``, then
``POST /v1/items`` with each held-out item's title, genres and release date (batches of up
to 1,000) and ``POST /v1/recommend`` with each test user's history (train + valid, the
held-out items included), ``k`` = 20. Prints the cold and warm Recall@20 and the cold share
of the top-20 slots measured this way, beside the same figures from the in-process
evaluation (``fusionrec evaluate --cold-items``) of the same bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

from model_store.data import movielens
from model_store.data.dataset import load_dataset
from model_store.evaluation.protocols import Split, cold_items

TOKEN = "bench-admin-token-0123456789"


def fusionrec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fusionrec", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold-items", type=float, default=0.1)
    ap.add_argument("--cold-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--users", type=int, default=0, help="warm users to ask (0 = all)")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fusionrec-cold-service-"))
    raw = movielens.fetch_raw(movielens.default_cache_dir())
    split = Split.of(load_dataset(movielens.write_dataset(raw, work / "ml-100k")))
    fit = split.training_data()
    data = work / "fit"
    data.mkdir()
    fit.interactions.to_csv(data / "interactions.csv", index=False)
    fit.items.to_csv(data / "items.csv", index=False)
    test = work / "test.csv"
    split.test[["user_id", "item_id"]].to_csv(test, index=False)
    cold = cold_items(fit, a.cold_items, a.cold_seed)
    store = work / "store"
    extra = ["--config", str(a.config)] if a.config else []
    t0 = time.perf_counter()
    fusionrec(
        "train",
        "--data",
        str(data),
        "--store",
        str(store),
        "--seed",
        str(a.seed),
        "--cold-items",
        str(a.cold_items),
        "--cold-seed",
        str(a.cold_seed),
        *extra,
    )
    fusionrec("index", "--store", str(store))
    train_s = time.perf_counter() - t0
    report = work / "evaluate.json"
    fusionrec(
        "evaluate",
        "--store",
        str(store),
        "--data",
        str(data),
        "--test",
        str(test),
        "--cold-items",
        str(a.cold_items),
        "--cold-seed",
        str(a.cold_seed),
        "--json",
        str(report),
    )
    offline = json.loads(report.read_text())

    env = {**os.environ, "FUSIONREC_ADMIN_TOKEN": TOKEN, "FUSIONREC_RATE_LIMIT_RPS": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "fusionrec", "serve", "--store", str(store), "--port", str(a.port)],
        env=env,
    )
    url = f"http://127.0.0.1:{a.port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            for _ in range(300):
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            items = fit.items[fit.items["item_id"].isin(cold)]
            records = [
                {k: (None if pd.isna(v) else str(v)) for k, v in r.items()}
                for r in items.to_dict("records")
            ]
            for s in range(0, len(records), 1000):
                r = c.post(
                    "/v1/items",
                    json={"items": records[s : s + 1000]},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                r.raise_for_status()
            histories = fit.interactions.groupby("user_id", sort=False)["item_id"].apply(list)
            hits = {"cold": [], "warm": []}
            slots = cold_slots = 0
            users = split.test
            if a.users:
                users = pd.concat(
                    [
                        users[users["item_id"].isin(cold)],
                        users[~users["item_id"].isin(cold)].head(a.users),
                    ]
                )
            for u, target in zip(users["user_id"], users["item_id"], strict=True):
                body = {"history": histories[u], "k": 20}
                got = [i["item_id"] for i in c.post("/v1/recommend", json=body).json()["items"]]
                hits["cold" if target in cold else "warm"].append(target in got)
                slots += len(got)
                cold_slots += sum(i in cold for i in got)
    finally:
        server.terminate()
        server.wait(30)
    m = offline["metrics"]
    print(f"train + index {train_s:.0f} s; {len(cold)} items held out\n")
    print("| measured | cold users | cold Recall@20 | warm Recall@20 | cold share of top-20 |")
    print("|---|---|---|---|---|")
    print(
        f"| `fusionrec evaluate --cold-items` (in process) | {int(m['cold']['users'])} | "
        f"{m['cold']['recall@20']:.4f} | {m['warm']['recall@20']:.4f} | "
        f"{offline['cold_share_of_top20']:.3f} |"
    )
    cold_r = sum(hits["cold"]) / max(len(hits["cold"]), 1)
    warm_r = sum(hits["warm"]) / max(len(hits["warm"]), 1)
    print(
        f"| `POST /v1/items` + `/v1/recommend` (live server) | {len(hits['cold'])} | "
        f"{cold_r:.4f} | {warm_r:.4f} | {cold_slots / max(slots, 1):.3f} |"
    )


if __name__ == "__main__":
    main()
