"""Shilling benchmark (issue 31): can a burst of fake shoppers push one item into everyone's
recommendations, and does the training guard stop it? (Not a test.)

    python bench/shilling.py --data /work/shill-data [--fakes 0.05] [--camouflage 5]
                             [--fake-weight 5] [--epochs 15] [--out reports/shilling]

Trains on the dataset as it is (before), then on the dataset plus ``--fakes`` (a fraction
of the real users) fake shoppers, each with ``--camouflage`` popular items and one unpopular
target item at ``--fake-weight`` (a purchase), with the guard off (``train.shopper_cap_events``
= ``train.new_shopper_events`` = 0) and on (the defaults, or ``--cap``/``--new``). Reports the
target's share of the real shoppers' top-20 slots (their whole history given, seen items
excluded) and how many real shoppers have it in their top 20.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.bundle.io import Bundle
from model_store.config import Config
from model_store.data.dataset import Dataset, load_dataset, read_table
from model_store.data.movielens import default_cache_dir
from model_store.evaluation.protocols import share_of
from model_store.model.scoring import EvalSet, rank_targets
from model_store.training.pipeline import train

TOP = 20


def pick_target(inter: pd.DataFrame, seed: int) -> str:
    """An unpopular item that is still trained (3..5 interactions)."""
    counts = inter["item_id"].value_counts()
    rare = sorted(counts[(counts >= 3) & (counts <= 5)].index)
    return str(np.random.default_rng(seed).choice(rare))


def with_fakes(
    data: Path, out: Path, *, fraction: float, camouflage: int, weight: float, seed: int
) -> tuple[Path, str, int]:
    """A copy of the dataset at ``data`` with fake shoppers; (path, target, how many)."""
    inter, _ = read_table(data / "interactions")
    if "weight" not in inter.columns:
        inter["weight"] = 1.0
    target = pick_target(inter, seed)
    popular = inter["item_id"].value_counts().index[:50].tolist()
    rng = np.random.default_rng(seed)
    n = max(1, round(fraction * inter["user_id"].nunique()))
    t0 = float(pd.to_numeric(inter["timestamp"]).max()) + 1
    rows = []
    for f in range(n):
        items = list(rng.choice(popular, camouflage, replace=False))
        items.insert(int(rng.integers(1, camouflage)), target)  # never first nor last
        for k, item in enumerate(items):
            rows.append((f"fake-{f}", item, t0 + f * 100 + k, weight))
    fakes = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "weight"])
    out.mkdir(parents=True, exist_ok=True)
    keep = inter[["user_id", "item_id", "timestamp", "weight"]].astype({"user_id": str})
    pd.concat([keep, fakes]).to_csv(out / "interactions.csv", index=False)
    read_table(data / "items")[0].to_csv(out / "items.csv", index=False)
    return out, target, int(n)


def target_share(ds: Dataset, bundle: Bundle, target: str, real: set[str]) -> tuple[float, int]:
    """(the target's share of the real users' top-20 slots, users with it in their top 20)."""
    index = bundle.index_of()
    hists: dict[str, list[int]] = {}
    for u, i in zip(ds.interactions["user_id"], ds.interactions["item_id"], strict=True):
        if str(u) in real and i in index:
            hists.setdefault(str(u), []).append(index[i])
    users = sorted(hists)
    data = EvalSet([hists[u] for u in users], [hists[u][0] for u in users])
    _, top = rank_targets(bundle.model, data, top_k=TOP)
    t = np.array([index[target]])
    return share_of(top, t), int(np.isin(top, t).any(1).sum())


def run(ds: Dataset, cfg: Config, target: str, real: set[str], label: str) -> list[str]:
    t0 = time.perf_counter()
    trained = train(ds, cfg, cache_dir=default_cache_dir())
    share, users = target_share(ds, trained.bundle, target, real)
    secs = time.perf_counter() - t0
    print(f"{label}: share {share:.5f}, {users} users, {secs:.0f} s", flush=True)
    return [label, f"{share * 100:.3f} %", str(users), f"{secs:.0f}"]


def config(epochs: int, cap: float, new: int) -> Config:
    return Config.from_dict(
        {
            "train": {
                "epochs": epochs,
                "rerank": False,
                "cold_epochs": 0,
                "shopper_cap_events": cap,
                "new_shopper_events": new,
                "device": "cpu",
            }
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--fakes", type=float, default=0.05)
    p.add_argument("--camouflage", type=int, default=5)
    p.add_argument("--fake-weight", type=float, default=5.0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--cap", type=float, default=None, help="guard on: shopper_cap_events")
    p.add_argument("--new", type=int, default=None, help="guard on: new_shopper_events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="before,off,on", help="which runs")
    args = p.parse_args()
    defaults = Config().train
    cap = defaults.shopper_cap_events if args.cap is None else args.cap
    new = defaults.new_shopper_events if args.new is None else args.new
    clean = load_dataset(args.data)
    real = {str(u) for u in clean.interactions["user_id"].unique()}
    with tempfile.TemporaryDirectory() as tmp:
        path, target, n = with_fakes(
            args.data,
            Path(tmp) / "attacked",
            fraction=args.fakes,
            camouflage=args.camouflage,
            weight=args.fake_weight,
            seed=args.seed,
        )
        attacked = load_dataset(path)
        print(f"target {target}; {n} fake shoppers of {len(real)} real", flush=True)
        on = f"after, guard on ({cap:g}, {new})"
        runs = {
            "before": (clean, config(args.epochs, cap, new), "before"),
            "off": (attacked, config(args.epochs, 0, 0), "after, guard off"),
            "on": (attacked, config(args.epochs, cap, new), on),
        }
        rows = [run(*runs[k][:2], target, real, runs[k][2]) for k in args.only.split(",")]
    print(f"\n{dt.date.today()} {platform.processor() or platform.machine()} cpus={os.cpu_count()}")
    print("| run | target's share of real top-20 slots | real shoppers with it | train s |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
