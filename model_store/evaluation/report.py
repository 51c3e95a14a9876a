"""The ablation report: tables by protocol, paired comparisons with bootstrap intervals,
the cold share, a plot, and every run's per-user ranks as JSON (``reports/``); the same
tables as Markdown (``ablation.md``) and as an HTML page with the plot (``ablation.html``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_store import pages
from model_store.evaluation.ablate import Ablation, Run
from model_store.evaluation.protocols import PROTOCOLS, Protocol, Stage, UserRanks
from model_store.evaluation.stats import Paired, paired_bootstrap, per_user, seed_mean
from model_store.pages import Table

METRICS = ("ndcg@10", "recall@10", "recall@20")
COMPARE = ("ndcg@10", "recall@20")
BASELINES = ("id", "text", "late")
MARKDOWN, HTML, JSON, PLOT = "ablation.md", "ablation.html", "ablation.json", "ablation.png"
PROTOCOL_TITLES = {
    "warm": "warm — every user",
    "tail": "long tail — the target has ≤ 50 training interactions",
    "short": "short histories — the last 3 items only",
    "cold": "cold items — the target was held out of training and added by its text",
}


def ranks_of(run: Run, protocol: Protocol, stage: Stage) -> UserRanks | None:
    source = run.cold if protocol == "cold" else run.warm
    if source is None:
        return None
    return source.ranks.get((protocol, stage))


def user_metric(runs: Sequence[Run], protocol: Protocol, stage: Stage, metric: str) -> np.ndarray:
    """The per-user ``metric`` of a strategy's runs, averaged over its seeds."""
    arrays = [per_user(r.ranks, metric) for r in (ranks_of(x, protocol, stage) for x in runs) if r]
    return seed_mean(arrays) if arrays else np.zeros(0)


def compare(
    a: Sequence[Run], b: Sequence[Run], protocol: Protocol, stage: Stage, metric: str
) -> Paired:
    """Paired bootstrap of ``a − b`` on the users the protocol measured (same for both)."""
    return paired_bootstrap(
        user_metric(a, protocol, stage, metric), user_metric(b, protocol, stage, metric)
    )


def _by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def _row(label: str, runs: list[Run], protocol: Protocol, stage: Stage) -> list[str] | None:
    per_seed = [ranks_of(r, protocol, stage) for r in runs]
    if not all(per_seed):
        return None
    ms = [p.metrics() for p in per_seed if p is not None]
    cells = []
    for m in METRICS:
        vals = [x[m] for x in ms]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        cells.append(f"{statistics.mean(vals):.4f} ± {spread:.4f}")
    n = len(per_seed[0].users) if per_seed[0] is not None else 0
    if protocol == "cold":
        shares = [r.cold.cold_share[stage] for r in runs if r.cold is not None]
        cells.append(f"{statistics.mean(shares):.3f}")
    return [label, str(len(runs)), str(n), *cells]


def protocol_rows(by: dict[str, list[Run]], protocol: Protocol, stage: Stage) -> Table | None:
    header = ["strategy", "seeds", "users", *METRICS]
    if protocol == "cold":
        header.append("cold share of top-20 slots")
    rows = [r for label, runs in by.items() if (r := _row(label, runs, protocol, stage))]
    return Table(header, rows, PROTOCOL_TITLES[protocol]) if rows else None


def protocol_table(by: dict[str, list[Run]], protocol: Protocol, stage: Stage) -> list[str]:
    table = protocol_rows(by, protocol, stage)
    return table.markdown() if table else []


def comparison_rows(by: dict[str, list[Run]], stage: Stage) -> Table | None:
    """joint against each baseline, per protocol and metric: mean difference [95 % CI]."""
    if "joint" not in by:
        return None
    table = Table(
        ["protocol", "joint vs", *(f"Δ {m} [95 % CI]" for m in COMPARE)],
        caption="joint against the baselines (paired)",
    )
    for protocol in PROTOCOLS:
        for other in BASELINES:
            if other not in by or ranks_of(by["joint"][0], protocol, stage) is None:
                continue
            cells = [str(compare(by["joint"], by[other], protocol, stage, m)) for m in COMPARE]
            table.rows.append([protocol, other, *cells])
    return table


def comparisons(by: dict[str, list[Run]], stage: Stage) -> list[str]:
    table = comparison_rows(by, stage)
    return table.markdown() if table else []


def _intro(ablation: Ablation) -> str:
    return (
        f"Data: `{ablation.data}`, {ablation.n_items} items. Leave-one-out per user; every "
        "ranking over the whole catalog with the history excluded. Mean ± std over seeds; "
        "paired differences are per-user metrics averaged over seeds, 95 % bootstrap "
        "intervals from 10,000 resamples of the users. Cold items: "
        f"{ablation.cold_fraction:.0%} of the catalog (cold seed {ablation.cold_seed}) held "
        "out of training, then added through the catalog path of `POST /v1/items`."
    )


def write_report(ablation: Ablation, out: Path) -> Path:
    """ablation.md (returned), ablation.html, ablation.json and ablation.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    by = _by_label(ablation.runs)
    title = "Ablation: fusion strategies by protocol"
    lines = [f"# {title}", "", _intro(ablation)]
    parts = [pages.paragraph(_intro(ablation).replace("`", ""))]
    for stage in ("test", "valid"):
        lines += ["", f"## {stage} stage", ""]
        parts.append(pages.heading(f"{stage} stage"))
        for protocol in PROTOCOLS:
            table = protocol_rows(by, protocol, stage)
            if table:
                lines += [f"### {table.caption}", "", *table.markdown(), ""]
                parts.append(table.html())
        comp = comparison_rows(by, stage)
        if comp:
            lines += [f"### {comp.caption}", "", *comp.markdown(), ""]
            parts.append(comp.html())
    training = _training_table(by)
    lines += ["", "## Training", "", *training.markdown()]
    parts += [pages.heading("Training"), training.html()]
    parts += [
        pages.heading("Figures"),
        pages.figure(PLOT, "test NDCG@10 and Recall@20 by protocol; validation curves"),
        pages.paragraph(
            f"Also here: {MARKDOWN} (this report as Markdown) and per-user ranks in {JSON}.",
            muted=True,
        ),
    ]
    report = out / MARKDOWN
    report.write_text("\n".join(lines) + "\n")
    (out / JSON).write_text(json.dumps(_as_json(ablation), default=float))
    plot(by, out / PLOT)
    (out / HTML).write_text(pages.page(title, parts))
    return report


def _training_table(by: dict[str, list[Run]]) -> Table:
    table = Table(["strategy", "best epoch", "s/epoch", "s to best", "head kept"])
    for label, runs in by.items():
        table.rows.append(
            [
                label,
                f"{statistics.mean(r.best_epoch for r in runs):.1f}",
                f"{statistics.mean(r.seconds_per_epoch for r in runs):.2f}",
                f"{statistics.mean(r.seconds_to_best for r in runs):.1f}",
                f"{sum(r.rerank for r in runs)}/{len(runs)}",
            ]
        )
    return table


def _as_json(ablation: Ablation) -> dict[str, Any]:
    def measured(m: Any) -> dict[str, Any] | None:
        if m is None:
            return None
        return {
            "ranks": {
                f"{p}/{s}": {"users": r.users, "ranks": r.ranks.tolist()}
                for (p, s), r in m.ranks.items()
            },
            "cold_share": m.cold_share,
            "cold_fraction": m.cold_fraction,
        }

    return {
        "data": str(ablation.data),
        "cold_fraction": ablation.cold_fraction,
        "cold_seed": ablation.cold_seed,
        "runs": [
            {
                **{k: v for k, v in r.__dict__.items() if k not in ("warm", "cold")},
                "warm": measured(r.warm),
                "cold": measured(r.cold),
            }
            for r in ablation.runs
        ],
    }


def plot(by: dict[str, list[Run]], path: Path) -> None:
    """Test NDCG@10 / Recall@20 per protocol and strategy with 95 % bootstrap intervals of
    the mean, and the validation curves of seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in PROTOCOLS if any(ranks_of(r[0], p, "test") for r in by.values())]
    fig, axes = plt.subplots(1, len(protocols) + 1, figsize=(4.2 * (len(protocols) + 1), 4.2))
    labels = list(by)
    x = np.arange(len(labels))
    for ax, protocol in zip(axes, protocols, strict=False):
        for off, metric in ((-0.2, "ndcg@10"), (0.2, "recall@20")):
            means, errs = [], []
            for label in labels:
                u = user_metric(by[label], protocol, "test", metric)
                ci = paired_bootstrap(u, np.zeros_like(u), resamples=2000)
                means.append(ci.mean)
                errs.append([ci.mean - ci.lo, ci.hi - ci.mean])
            ax.bar(x + off, means, width=0.4, yerr=np.array(errs).T, capsize=3, label=metric)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_title(protocol)
        ax.legend(fontsize=8)
    curves = axes[-1]
    for label, runs in by.items():
        if runs[0].curve and runs[0].fusion not in ("late", "text"):
            curves.plot(range(1, len(runs[0].curve) + 1), runs[0].curve, label=label)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation NDCG@10")
    curves.set_title("validation curves (seed 0)")
    curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
