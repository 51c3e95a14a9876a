"""Quality benchmark on the shared MovieLens-100k leave-one-out split (not a test).

    python bench/quality.py [--seeds 3] [--strategies id,text,late,joint] [--out reports/quality]
                            [--cold-items 0.1] [--cold-seed 0] [--config cfg.json]

Reproduces the peers' split (md5-checked against ../shared/PEERS.md), trains every strategy
for each seed twice (on train + valid, and with the cold items held out; early stopping on
the valid item), measures the warm, long-tail, short-history and cold-item protocols at
the valid and test stages (``model_store.evaluation.protocols``), and prints the ablation
report, our figures beside the peers' and the targets of issue 17 with paired bootstrap intervals.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
from pathlib import Path

from model_store.config import Config
from model_store.data import movielens
from model_store.evaluation.ablate import Ablation, Run, run_ablation
from model_store.evaluation.report import compare, ranks_of, write_report

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


def mean_metric(runs: list[Run], protocol: str, stage: str, metric: str) -> float:
    values = []
    for r in runs:
        ranks = ranks_of(r, protocol, stage)  # type: ignore[arg-type]
        if ranks is not None:
            values.append(ranks.metrics()[metric])
    return statistics.mean(values) if values else float("nan")


def targets(ab: Ablation, stage: str = "test") -> list[str]:
    """The issue-17 targets: needed, reached, met — on the ``stage`` users."""
    by: dict[str, list[Run]] = {}
    for r in ab.runs:
        by.setdefault(r.label, []).append(r)
    if "joint" not in by or "id" not in by:
        return []
    joint, ids = by["joint"], by["id"]

    def m(runs: list[Run], protocol: str, metric: str) -> float:
        return mean_metric(runs, protocol, stage, metric)

    warm_r20 = m(joint, "warm", "recall@20")
    warm_nd = m(joint, "warm", "ndcg@10")
    cold_r20 = m(joint, "cold", "recall@20")
    cold_models_warm = statistics.mean(
        r.cold.ranks[("warm", stage)].metrics()["recall@20"]  # type: ignore[index, union-attr]
        for r in joint
        if r.cold is not None
    )
    share = statistics.mean(r.cold.cold_share[stage] for r in joint if r.cold is not None)
    tail = compare(joint, ids, "tail", stage, "recall@20")  # type: ignore[arg-type]
    short = compare(joint, ids, "short", stage, "ndcg@10")  # type: ignore[arg-type]
    warm_n = compare(joint, ids, "warm", stage, "ndcg@10")  # type: ignore[arg-type]
    tail_ratio = m(joint, "tail", "recall@20") / max(m(ids, "tail", "recall@20"), 1e-9)
    best_nd = max(p["ndcg@10"] for p in PEERS.values())
    best_r20 = max(p["recall@20"] for p in PEERS.values())
    cold_frac = statistics.mean(r.cold.cold_fraction for r in joint if r.cold is not None)

    def yes(ok: bool) -> str:
        return "**yes**" if ok else "no"

    return [
        "| target | needed | reached | met |",
        "|---|---|---|---|",
        f"| cold Recall@20 ≥ 0.5 × warm Recall@20 of the same model | ≥ "
        f"{0.5 * cold_models_warm:.4f} | {cold_r20:.4f} | "
        f"{yes(cold_r20 >= 0.5 * cold_models_warm)} |",
        f"| cold share of top-20 slots ≤ 2 × cold fraction ({cold_frac:.3f}) | ≤ "
        f"{2 * cold_frac:.3f} | {share:.3f} | {yes(share <= 2 * cold_frac)} |",
        f"| long tail: joint beats id on Recall@20 (paired CI > 0) | lo > 0 | {tail} | "
        f"{yes(tail.beats)} |",
        f"| long tail: joint ≥ 1.3 × id on Recall@20 | ≥ 1.30× | {tail_ratio:.2f}× | "
        f"{yes(tail_ratio >= 1.3)} |",
        f"| short histories: joint beats id on NDCG@10 (paired CI > 0) | lo > 0 | {short} | "
        f"{yes(short.beats)} |",
        f"| warm: joint not worse than id on NDCG@10 (CI lo > −0.005) | lo > −0.005 | "
        f"{warm_n} | {yes(warm_n.not_worse())} |",
        f"| warm NDCG@10 ≥ 1.15 × best peer ({best_nd}) | ≥ {1.15 * best_nd:.4f} | "
        f"{warm_nd:.4f} | {yes(warm_nd >= 1.15 * best_nd)} |",
        f"| warm Recall@20 ≥ 1.15 × best peer ({best_r20}) | ≥ {1.15 * best_r20:.4f} | "
        f"{warm_r20:.4f} | {yes(warm_r20 >= 1.15 * best_r20)} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="id,text,late,joint")
    ap.add_argument("--alphas", default="", help="extra joint α values")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--cold-items", type=float, default=0.1)
    ap.add_argument("--cold-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/quality"))
    a = ap.parse_args()

    raw = movielens.fetch_raw(movielens.default_cache_dir())
    work = Path(tempfile.mkdtemp(prefix="fusionrec-quality-"))
    sums = movielens.write_split(raw, work / "split")
    assert sums == movielens.EXPECTED_SPLIT_MD5, f"split differs from the peers': {sums}"
    data = movielens.write_dataset(raw, work / "ml-100k")
    base = Config.from_file(a.config) if a.config else Config()
    ab = run_ablation(
        data=data,
        base=base,
        seeds=a.seeds,
        strategies=a.strategies.split(","),
        alphas=[float(x) for x in a.alphas.split(",") if x],
        epochs=a.epochs,
        cold_fraction=a.cold_items,
        cold_seed=a.cold_seed,
        log=print,
    )
    report = write_report(ab, a.out)
    joint = [r for r in ab.runs if r.label == "joint"]
    lines = [report.read_text(), "## Against the peers (test set, same split)", ""]
    lines += ["| model | NDCG@10 | Recall@10 | Recall@20 |", "|---|---|---|---|"]
    lines += [
        f"| {name} (RecBole) | {p['ndcg@10']:.4f} | {p['recall@10']:.4f} | {p['recall@20']:.4f} |"
        for name, p in PEERS.items()
    ]
    if joint:
        cells = " | ".join(
            f"{mean_metric(joint, 'warm', 'test', m):.4f}"
            for m in ("ndcg@10", "recall@10", "recall@20")
        )
        lines.append(f"| **fusionrec joint** (mean of {len(joint)}) | {cells} |")
    for stage in ("test", "valid"):
        rows = targets(ab, stage)
        if rows:
            lines += ["", f"## Targets of issue 17 ({stage} users)", "", *rows]
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; command: `python bench/quality.py "
        f"--seeds {a.seeds} --strategies {a.strategies}`",
    ]
    text = "\n".join(lines)
    (a.out / "quality.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
