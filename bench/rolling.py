"""Rolling-protocol comparisons (not a test): one training per call, ranks saved, then paired.

    python bench/rolling.py train --data DIR --label joint-gate --seed 0 [--epochs 30]
                                  [--set model.id_gate=true ...] [--stage valid] [--out DIR]
    python bench/rolling.py compare --a DIR/joint-gate-s0.csv --b DIR/joint-s0.csv [...]

``train`` trains the default config (with ``--set`` overrides) on the rolling split's
training data (``model_store.evaluation.rolling``), ranks the ``--stage`` targets (valid
unless told: options are chosen there) and writes their ranks to ``OUT/LABEL-sSEED.csv``
with a one-line summary. ``compare`` prints each group's per-user means and the paired
95 % bootstrap interval of ``a − b`` over users; with several files per side (seeds) each
user's values are averaged over them first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.data.movielens import default_cache_dir
from model_store.evaluation.rolling import (
    GROUPS,
    RollingRanks,
    RollingSplit,
    compare_rolling,
    measure_rolling,
    ranks_frame,
    ranks_from_frame,
)
from model_store.training.pipeline import train

METRICS = ("ndcg@10", "recall@20")


def _config(sets: list[str], seed: int, epochs: int | None) -> Config:
    raw = Config().to_dict()
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        raw[section][name] = json.loads(value)
    raw["train"]["seed"] = seed
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    return Config.from_dict(raw, source="--set")


def run_train(a: argparse.Namespace) -> None:
    cfg = _config(a.set, a.seed, a.epochs)
    dataset = load_dataset(a.data, text_columns=cfg.text.text_columns)
    split = RollingSplit.of(dataset, a.r)
    t0 = time.perf_counter()
    trained = train(split.training_data(), cfg, cache_dir=default_cache_dir())
    seconds = time.perf_counter() - t0
    groups = measure_rolling(trained.bundle, split, a.stage)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"{a.label}-s{a.seed}.csv"
    ranks_frame(groups).to_csv(path, index=False)
    r = trained.result
    gate = trained.bundle.model.items.gate
    extra = (
        f" gate item {gate.item_ab.tolist()} user {gate.user_ab.tolist()}" if gate else ""
    )  # fmt: skip
    print(
        f"{a.label} s{a.seed} {a.stage}: "
        + " ".join(f"{g} {m} {groups[g].mean(m):.4f}" for g in GROUPS for m in METRICS)
        + f" | targets {len(groups['warm'].ranks)} tail {len(groups['tail'].ranks)}"
        f" | best epoch {r.best_epoch}/{r.epochs_run}, {seconds:.0f} s, head {r.rerank}"
        f"{extra} -> {path}"
    )


def _seed_mean(paths: list[Path]) -> dict[str, RollingRanks]:
    """Ranks of several seeds: kept per target, a user's mean then covers every seed."""
    frames = [ranks_from_frame(pd.read_csv(p, dtype={"user_id": str})) for p in paths]
    out: dict[str, RollingRanks] = {}
    for g in GROUPS:
        users = np.concatenate([f[g].users for f in frames])
        ranks = np.concatenate([f[g].ranks for f in frames])
        out[g] = RollingRanks(users, ranks)
    return out


def run_compare(a: argparse.Namespace) -> None:
    left, right = _seed_mean(a.a), _seed_mean(a.b)
    for g in GROUPS:
        for m in METRICS:
            ma, mb, paired = compare_rolling(left[g], right[g], m)
            print(f"{g:5s} {m:9s} a {ma:.4f} b {mb:.4f} a−b {paired}  ratio {ma / mb:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--label", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--r", type=int, default=5)
    t.add_argument("--stage", choices=("valid", "test"), default="valid")
    t.add_argument("--set", action="append", default=[], help="section.key=JSON value")
    t.add_argument("--out", type=Path, default=Path("reports/rolling"))
    c = sub.add_parser("compare")
    c.add_argument("--a", type=Path, nargs="+", required=True)
    c.add_argument("--b", type=Path, nargs="+", required=True)
    a = ap.parse_args()
    run_train(a) if a.cmd == "train" else run_compare(a)


if __name__ == "__main__":
    main()
