"""`fusionrec ablate`: every fusion strategy (and joint α) on one leave-one-out split, 3 seeds.

The dataset is split per user (canonical order): last interaction = test, the rest = the
training data, whose own last interaction is the validation item used for early stopping
(so on MovieLens-100k this is exactly the peers' train/valid/test split). Each run is
evaluated on the test items with full ranking, history (train + valid) excluded.

`late` reuses the `id` run of the same seed: late fusion adds the zero-shot text score to
the trained ID model's score and needs no training of its own.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.config import FUSIONS, Config
from model_store.data import Dataset, load_dataset
from model_store.errors import ConfigError
from model_store.evaluate import EvalSet, evaluate
from model_store.movielens import default_cache_dir
from model_store.prepare import Prepared, prepare, split_by_user
from model_store.train import catalog_embeddings
from model_store.trainer import TrainResult, build_model, fit, fit_rerank

REPORT_METRICS = ("ndcg@10", "recall@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")


@dataclass
class Run:
    label: str
    fusion: str
    alpha: float
    seed: int
    test: dict[str, dict[str, float]]
    valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_to_best: float
    seconds_per_epoch: float
    curve: list[float] = field(default_factory=list)
    rerank: bool = False


def split_for_test(dataset: Dataset) -> tuple[Dataset, pd.DataFrame]:
    """(training dataset = all but each user's last interaction, test targets)."""
    inter = dataset.interactions
    groups = inter.groupby("user_id", sort=False)["user_id"]
    pos = groups.cumcount(ascending=False).to_numpy()
    size = groups.transform("size").to_numpy()
    is_test = (size >= 3) & (pos == 0)
    train = inter[~is_test].reset_index(drop=True)
    test = inter[is_test].reset_index(drop=True)
    return Dataset(
        interactions=train,
        items=dataset.items,
        text_columns=dataset.text_columns,
        source=dataset.source,
    ), test


def test_set(train: Dataset, test: pd.DataFrame) -> EvalSet:
    items = pd.Index(train.items["item_id"])
    users, seqs, _ = split_by_user(train.interactions, items)
    pos = {u: k for k, u in enumerate(users)}
    hists, targets = [], []
    for u, it in zip(test["user_id"], test["item_id"], strict=True):
        if u in pos:
            hists.append(seqs[pos[u]].tolist())
            targets.append(int(items.get_loc(it)) + 1)
    return EvalSet(hists, targets)


def run_ablation(
    *,
    data: Path,
    out: Path,
    base: Config,
    seeds: int,
    strategies: Sequence[str],
    alphas: Sequence[float],
    epochs: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Path:
    for s in strategies:
        if s not in FUSIONS:
            raise ConfigError(f"unknown strategy {s!r}; valid: {', '.join(FUSIONS)}")
    dataset = load_dataset(data, text_columns=base.text.text_columns)
    train_ds, test = split_for_test(dataset)
    text = catalog_embeddings(dataset, base, cache_dir=default_cache_dir())
    evalset = test_set(train_ds, test)
    plans: list[tuple[str, str, float]] = [(s, s, base.train.alpha) for s in strategies]
    if "joint" in strategies:
        plans += [(f"joint α={a:g}", "joint", a) for a in alphas if a != base.train.alpha]
    runs: list[Run] = []
    id_models: dict[int, TrainResult] = {}
    for seed in range(seeds):
        for label, fusion, alpha in plans:
            cfg = base.model_copy(deep=True)
            cfg.model.fusion = fusion  # type: ignore[assignment]
            cfg.train.alpha = alpha
            cfg.train.seed = seed
            cfg.train.holdout = True
            if epochs is not None:
                cfg.train.epochs = epochs
            prep = prepare(train_ds, holdout=True)
            prep.text_emb = text
            if fusion == "late" and seed in id_models:
                result = _late_from_id(cfg, prep, id_models[seed])
            else:
                result = fit(cfg, prep)
            if fusion == "id":
                id_models[seed] = result
            warm = [False, *result.model.has_id[1:].tolist()]
            metrics = evaluate(result.model, evalset, warm_items=warm)
            runs.append(
                Run(
                    label=label
                    if fusion != "joint" or alpha != base.train.alpha
                    else f"joint α={alpha:g}",
                    fusion=fusion,
                    alpha=alpha,
                    seed=seed,
                    test=metrics,
                    valid=result.valid_metrics,
                    best_epoch=result.best_epoch,
                    epochs_run=result.epochs_run,
                    seconds=result.seconds,
                    seconds_to_best=result.seconds_to_best,
                    seconds_per_epoch=result.seconds / max(result.epochs_run, 1),
                    curve=[r.get("valid_ndcg@10", float("nan")) for r in result.history],
                    rerank=bool(result.model.use_head),
                )
            )
            log(
                f"seed {seed} {runs[-1].label}: test ndcg@10 {metrics['all']['ndcg@10']:.4f} "
                f"recall@20 {metrics['all']['recall@20']:.4f} (best epoch {result.best_epoch}, "
                f"{result.seconds:.0f} s)"
            )
    return write_report(runs, out, data=data, n_test=len(evalset))


def _late_from_id(cfg: Config, prep: Prepared, id_result: TrainResult) -> TrainResult:
    """Late fusion = the trained id model + the zero-shot text score; nothing to train."""
    model = build_model(cfg, prep, id_result.model.text_emb.device)
    state = {k: v for k, v in id_result.model.state_dict().items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    model.eval()
    valid_metrics: dict[str, float] = {}
    if prep.valid is not None:
        valid_metrics = evaluate(model, prep.valid, use_head=False)["all"]
    rerank, valid_metrics = fit_rerank(model, cfg, prep.valid, valid_metrics)
    return TrainResult(
        model,
        id_result.best_epoch,
        id_result.epochs_run,
        id_result.history,
        valid_metrics,
        id_result.seconds,
        id_result.seconds_to_best,
        rerank,
    )


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    labels = list(dict.fromkeys(r.label for r in runs))
    rows = []
    for label in labels:
        rs = [r for r in runs if r.label == label]
        row: dict[str, Any] = {"label": label, "seeds": len(rs)}
        for m in REPORT_METRICS:
            vals = [r.test["all"][m] for r in rs]
            row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        row["cold_ndcg@10"] = statistics.mean(
            [r.test.get("cold", {}).get("ndcg@10", float("nan")) for r in rs]
        )
        row["cold_users"] = rs[0].test.get("cold", {}).get("users", 0)
        row["best_epoch"] = statistics.mean([r.best_epoch for r in rs])
        row["s_per_epoch"] = statistics.mean([r.seconds_per_epoch for r in rs])
        row["s_to_best"] = statistics.mean([r.seconds_to_best for r in rs])
        row["rerank"] = sum(r.rerank for r in rs)
        rows.append(row)
    return rows


def write_report(runs: list[Run], out: Path, *, data: Path, n_test: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    lines = [
        "# Ablation: fusion strategies",
        "",
        f"Data: `{data}`; test = each user's last interaction ({n_test} users), full ranking "
        "over the catalog with the user's history excluded; early stopping on the "
        "second-to-last interaction. Mean ± std over seeds.",
        "",
        "| strategy | seeds | NDCG@10 | Recall@10 | Recall@20 | NDCG@20 | MRR@10 | "
        "coverage@10 | best epoch | s/epoch | s to best | head kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in REPORT_METRICS]
        lines.append(
            f"| {r['label']} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {r['best_epoch']:.1f} | {r['s_per_epoch']:.2f} | {r['s_to_best']:.1f}"
            f" | {r['rerank']}/{r['seeds']} |"
        )
    by = {r["label"]: r for r in rows}
    joint = next(
        (
            r
            for r in rows
            if r["label"].startswith("joint") and r["label"] == _default_joint_label(runs)
        ),
        None,
    )
    lines.append("")
    if joint is not None:
        for other in ("id", "text", "late"):
            if other in by:
                d = joint["ndcg@10"][0] - by[other]["ndcg@10"][0]
                spread = max(joint["ndcg@10"][1], by[other]["ndcg@10"][1])
                verdict = (
                    "beats" if d > spread else "does not clearly beat" if d > 0 else "does not beat"
                )
                lines.append(
                    f"- {joint['label']} {verdict} `{other}`: NDCG@10 difference "
                    f"{d:+.4f}, larger seed std {spread:.4f}."
                )
    report = out / "ablation.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(
        json.dumps({"runs": [r.__dict__ for r in runs]}, indent=2, default=float)
    )
    _plot(runs, rows, out / "ablation.png")
    return report


def _default_joint_label(runs: list[Run]) -> str:
    joint = [r for r in runs if r.fusion == "joint"]
    return joint[0].label if joint else ""


def _plot(runs: list[Run], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [r["label"] for r in rows]
    x = np.arange(len(labels))
    for off, metric in ((-0.2, "ndcg@10"), (0.2, "recall@20")):
        ax1.bar(
            x + off,
            [r[metric][0] for r in rows],
            width=0.4,
            yerr=[r[metric][1] for r in rows],
            capsize=3,
            label=metric,
        )
    ax1.set_xticks(x, labels, rotation=30, ha="right")
    ax1.set_title("test metrics (mean ± std over seeds)")
    ax1.legend()
    for r in runs:
        if r.seed == 0 and r.curve and r.fusion != "late":
            ax2.plot(range(1, len(r.curve) + 1), r.curve, label=r.label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation NDCG@10")
    ax2.set_title("validation curves (seed 0)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
