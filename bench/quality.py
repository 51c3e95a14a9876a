"""Quality benchmark on the shared MovieLens-100k leave-one-out split (not a test).

    python bench/quality.py [--seeds 3] [--strategies id,text,late,joint] [--out reports/quality]

Reproduces the peers' split (md5-checked against ../shared/PEERS.md), trains every strategy
on train+valid (early stopping on the valid item) for each seed, evaluates on the test
items with full ranking and history excluded, and prints our figures beside the peers'.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from model_store import movielens
from model_store.ablate import run_ablation
from model_store.config import Config

# ../shared/PEERS.md: RecBole 1.2.1, same split and protocol, 2-core CPU, 2026-11-28
PEERS = {
    "Pop": {"ndcg@10": 0.0291, "recall@20": 0.1018, "recall@10": 0.0604},
    "BPR": {"ndcg@10": 0.0622, "recall@20": 0.2025, "recall@10": 0.1251},
    "LightGCN (200 ep)": {"ndcg@10": 0.0635, "recall@20": 0.2153, "recall@10": 0.1241},
    "GRU4Rec": {"ndcg@10": 0.1030, "recall@20": 0.3033, "recall@10": 0.2142},
    "SASRec": {"ndcg@10": 0.1094, "recall@20": 0.3203, "recall@10": 0.2100},
    "BERT4Rec": {"ndcg@10": 0.0848, "recall@20": 0.2619, "recall@10": 0.1729},
    "FDSA": {"ndcg@10": 0.0914, "recall@20": 0.2683, "recall@10": 0.1739},
}
SASREC_S_PER_EPOCH, SASREC_BEST_EPOCH = 82.5, 14


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="id,text,late,joint")
    ap.add_argument("--alphas", default="", help="extra joint α values (the ablation's)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/quality"))
    a = ap.parse_args()

    raw = movielens.fetch_raw(movielens.default_cache_dir())
    work = Path(tempfile.mkdtemp(prefix="fusionrec-quality-"))
    sums = movielens.write_split(raw, work / "split")
    assert sums == movielens.EXPECTED_SPLIT_MD5, f"split differs from the peers': {sums}"
    data = movielens.write_dataset(raw, work / "ml-100k")
    base = Config.from_file(a.config) if a.config else Config()
    report = run_ablation(
        data=data,
        out=a.out,
        base=base,
        seeds=a.seeds,
        strategies=a.strategies.split(","),
        alphas=[float(x) for x in a.alphas.split(",") if x],
        epochs=a.epochs,
        log=print,
    )
    runs = json.loads((a.out / "ablation.json").read_text())["runs"]
    joint = [r for r in runs if r["fusion"] == "joint" and r["alpha"] == base.train.alpha]
    best_peer_ndcg = max(p["ndcg@10"] for p in PEERS.values())
    best_peer_r20 = max(p["recall@20"] for p in PEERS.values())
    lines = [
        report.read_text(),
        "",
        "## Against the peers (test set, same split)",
        "",
        "| model | NDCG@10 | Recall@10 | Recall@20 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} (RecBole) | {p['ndcg@10']:.4f} | {p['recall@10']:.4f} | {p['recall@20']:.4f} |"
        for name, p in PEERS.items()
    ]
    if joint:
        nd = [r["test"]["all"]["ndcg@10"] for r in joint]
        r10 = [r["test"]["all"]["recall@10"] for r in joint]
        r20 = [r["test"]["all"]["recall@20"] for r in joint]
        to_best = statistics.mean(r["seconds_to_best"] for r in joint)
        per_epoch = statistics.mean(r["seconds_per_epoch"] for r in joint)
        sasrec_to_best = SASREC_S_PER_EPOCH * SASREC_BEST_EPOCH
        lines += [
            f"| **fusionrec joint** (mean of {len(joint)}) | **{statistics.mean(nd):.4f}** | "
            f"{statistics.mean(r10):.4f} | **{statistics.mean(r20):.4f}** |",
            "",
            "| target | needed | reached | ratio | met |",
            "|---|---|---|---|---|",
            f"| NDCG@10 ≥ 1.15 × best peer ({best_peer_ndcg}) | {1.15 * best_peer_ndcg:.4f} | "
            f"{statistics.mean(nd):.4f} | {statistics.mean(nd) / best_peer_ndcg:.3f}× | "
            f"{'yes' if statistics.mean(nd) >= 1.15 * best_peer_ndcg else 'no'} |",
            f"| Recall@20 ≥ 1.15 × best peer ({best_peer_r20}) | {1.15 * best_peer_r20:.4f} | "
            f"{statistics.mean(r20):.4f} | {statistics.mean(r20) / best_peer_r20:.3f}× | "
            f"{'yes' if statistics.mean(r20) >= 1.15 * best_peer_r20 else 'no'} |",
            f"| wall time to best epoch ≤ 0.2 × SASRec ({sasrec_to_best:.0f} s) | "
            f"{0.2 * sasrec_to_best:.0f} s | {to_best:.1f} s | "
            f"{to_best / sasrec_to_best:.3f}× | "
            f"{'yes' if to_best <= 0.2 * sasrec_to_best else 'no'} |",
            "",
            f"Seconds per epoch: fusionrec joint {per_epoch:.2f} s (incl. validation) vs "
            f"RecBole SASRec {SASREC_S_PER_EPOCH} s (PEERS.md).",
        ]
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"{dt.date.today().isoformat()}; command: `python bench/quality.py "
        f"--seeds {a.seeds} --strategies {a.strategies}`",
    ]
    text = "\n".join(lines)
    (a.out / "quality.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
