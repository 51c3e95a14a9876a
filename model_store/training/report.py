"""The training report of a bundle: ``report.html`` and its ``training.png`` (losses and
validation curves per epoch), made from the manifest alone, so any bundle can have one.

``train_and_publish`` writes both into the bundle before it is published (they are hashed
in the manifest like every other file); ``fusionrec report --store S`` prints or opens it.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_store import pages
from model_store.bundle.manifest import Manifest
from model_store.pages import Table

REPORT = "report.html"
CURVES = "training.png"


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def summary(manifest: Manifest) -> str:
    d, m, cfg, lm = manifest.data, manifest.metrics, manifest.config, manifest.text_model
    return (
        f"Fusion {cfg.model.fusion} (α = {cfg.train.alpha:g}), text model "
        f"{lm.name} ({lm.mode}, {lm.precision}); data {d.source}: "
        f"{d.n_users} users, {d.n_items} items, {d.n_interactions} interactions, "
        f"{'last item per user held out for validation' if d.holdout else 'no holdout'}. "
        f"Best epoch {m.best_epoch} of {m.epochs_run}, {m.train_seconds:.1f} s "
        f"({m.seconds_per_epoch:.2f} s/epoch, batch {m.batch_size})."
    )


def metrics_table(manifest: Manifest) -> Table:
    """The validation metrics of the kept (best) epoch."""
    return Table(
        ["metric", "value"],
        [[k, _fmt(int(v) if k == "users" else v)] for k, v in manifest.metrics.valid.items()],
        "validation (last item per user, full ranking), best epoch",
    )


def epochs_table(manifest: Manifest) -> Table:
    history = manifest.metrics.history
    keys = list(dict.fromkeys(k for row in history for k in row if k != "epoch"))
    rows = [[str(n), *(_fmt(row.get(k)) for k in keys)] for n, row in enumerate(history, 1)]
    return Table(["epoch", *keys], rows, "every epoch")


def head_table(manifest: Manifest) -> Table:
    r = manifest.rerank
    return Table(
        ["fusion head", "value"],
        [
            ["reranks", "yes" if r.enabled else "no"],
            ["why", r.reason],
            ["valid ndcg@10, retrieval only", _fmt(r.valid_ndcg10_retrieval)],
            ["valid ndcg@10, with the head", _fmt(r.valid_ndcg10_with_head)],
            ["examples", _fmt(r.examples)],
        ],
        "the fusion head (cross-fitted)",
    )


def cold_table(manifest: Manifest) -> Table | None:
    c = manifest.cold
    if not c.enabled:
        return None
    return Table(
        ["cold tower", "value"],
        [
            ["epochs", str(c.epochs)],
            ["ID drop rate", _fmt(c.rate)],
            ["final loss", _fmt(c.loss[-1] if c.loss else None)],
            ["seconds", f"{c.seconds:.1f}"],
            ["calibrated offset", _fmt(c.offset)],
            ["top-20 share, trained items", _fmt(c.share_trained)],
            ["top-20 share, cold items", _fmt(c.share_cold)],
        ],
        f"cold items: the neighbour tower for items added by text ({c.reason})",
    )


def plot_curves(manifest: Manifest, path: Path) -> None:
    """Losses (left) and validation metrics (right) per epoch; the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = manifest.metrics.history
    epochs = list(range(1, len(history) + 1))
    fig, (losses, valid) = plt.subplots(1, 2, figsize=(10, 4))
    keys = list(dict.fromkeys(k for row in history for k in row))
    for ax, prefix, title in ((losses, "loss", "training losses"), (valid, "valid_", "validation")):
        for k in (k for k in keys if k.startswith(prefix)):
            ax.plot(epochs, [row.get(k, float("nan")) for row in history], marker="o", label=k)
        if manifest.metrics.best_epoch:
            ax.axvline(manifest.metrics.best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{manifest.version} — {manifest.config.model.fusion}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_training_report(manifest: Manifest, out: Path) -> Path:
    """``out/report.html`` and ``out/training.png`` for ``manifest``; returns the page."""
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(manifest, out / CURVES)
    parts = [
        pages.paragraph(summary(manifest)),
        pages.heading("Validation"),
        metrics_table(manifest).html(),
        pages.figure(CURVES, "training losses and validation metrics per epoch"),
        epochs_table(manifest).html(),
        pages.heading("Fusion head and cold items"),
        head_table(manifest).html(),
    ]
    cold = cold_table(manifest)
    parts.append(cold.html() if cold else pages.paragraph("no cold tower: " + manifest.cold.reason))
    parts += [
        pages.heading("Configuration"),
        pages.preformatted(json.dumps(manifest.config.to_dict(), indent=2)),
        pages.paragraph(f"created {manifest.created_at}", muted=True),
    ]
    report = out / REPORT
    report.write_text(pages.page(f"Training report — {manifest.version}", parts))
    return report
