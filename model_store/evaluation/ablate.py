"""`fusionrec ablate`: every fusion strategy on one leave-one-out split, seeds × protocols.

For each seed and strategy two models are trained (``model_store.training.pipeline.train``, the
in-memory bundle ``fusionrec train`` would publish): one on the whole training data —
measured by the ``warm``, ``tail`` and ``short`` protocols — and one with the cold items
held out — measured by ``cold`` after they are added through the catalog path
(``model_store.evaluation.protocols``). Every protocol is measured at the ``valid`` stage (choose
options there) and the ``test`` stage (report there). ``late`` reuses the ``id`` model of
the same seed: late fusion adds the zero-shot text score to the trained ID model's score and
needs no training of its own. ``report.write_report`` turns the runs into tables with
paired bootstrap intervals and a plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model_store.bundle.io import Bundle
from model_store.config import FUSIONS, Config
from model_store.data.dataset import load_dataset
from model_store.data.movielens import default_cache_dir
from model_store.errors import ConfigError
from model_store.evaluation.protocols import Measured, Split, cold_items, measure_cold, measure_warm
from model_store.model.scoring import evaluate
from model_store.training.pipeline import Trained, catalog_embeddings, train
from model_store.training.trainer import TrainResult, build_model, fit_rerank


@dataclass
class Run:
    """One trained strategy and seed, measured by every protocol."""

    label: str
    fusion: str
    alpha: float
    seed: int
    warm: Measured
    cold: Measured | None
    valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_to_best: float
    seconds_per_epoch: float
    curve: list[float] = field(default_factory=list)
    rerank: bool = False


@dataclass
class Ablation:
    runs: list[Run]
    data: Path
    cold_fraction: float
    cold_seed: int
    n_items: int


def late_from_id(trained_id: Trained, cfg: Config) -> Trained:
    """Late fusion = the trained id model + the zero-shot text score; nothing to train."""
    src, prep = trained_id.bundle, trained_id.prep
    model = build_model(cfg, prep, src.model.text_emb.device)
    state = {k: v for k, v in src.model.state_dict().items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    model.eval()
    valid = prep.valid
    metrics = evaluate(model, valid, use_head=False)["all"] if valid is not None else {}
    rerank, metrics = fit_rerank(model, cfg, valid, metrics)
    r = trained_id.result
    result = TrainResult(
        model, r.best_epoch, r.epochs_run, r.history, metrics, r.seconds,
        r.seconds_to_best, rerank, r.cold, r.batch_size,
    )  # fmt: skip
    manifest = src.manifest.model_copy(update={"config": cfg, "rerank": rerank}, deep=True)
    bundle = Bundle(src.path, manifest, model, list(src.item_ids), src.items, src.histories)
    return Trained(bundle, result, None, prep)


def _train(cfg: Config, split: Split, *, without: frozenset[str] = frozenset()) -> Trained:
    return train(split.training_data(without=without), cfg, cache_dir=default_cache_dir())


def run_ablation(
    *,
    data: Path,
    base: Config,
    seeds: int,
    strategies: Sequence[str],
    alphas: Sequence[float] = (),
    epochs: int | None = None,
    cold_fraction: float = 0.1,
    cold_seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> Ablation:
    """Train and measure every strategy (and extra joint α) over seeds."""
    for s in strategies:
        if s not in FUSIONS:
            raise ConfigError(f"unknown strategy {s!r}; valid: {', '.join(FUSIONS)}")
    dataset = load_dataset(data, text_columns=base.text.text_columns)
    split = Split.of(dataset)
    catalog_embeddings(dataset, base, cache_dir=default_cache_dir())  # cached for every run
    cold = cold_items(dataset, cold_fraction, cold_seed) if cold_fraction > 0 else frozenset()
    plans: list[tuple[str, str, float]] = [(s, s, base.train.alpha) for s in strategies]
    if "joint" in strategies:
        plans += [(f"joint α={a:g}", "joint", a) for a in alphas if a != base.train.alpha]
    runs: list[Run] = []
    for seed in range(seeds):
        ids: dict[bool, Trained] = {}  # the id models of this seed, by "cold items held out"
        for label, fusion, alpha in plans:
            cfg = base.model_copy(deep=True)
            cfg.model.fusion = fusion  # type: ignore[assignment]
            cfg.train.alpha, cfg.train.seed, cfg.train.holdout = alpha, seed, True
            if epochs is not None:
                cfg.train.epochs = epochs
            models: dict[bool, Trained] = {}
            for held_out in (False, True) if cold else (False,):
                if fusion == "late" and held_out in ids:
                    models[held_out] = late_from_id(ids[held_out], cfg)
                else:
                    models[held_out] = _train(cfg, split, without=cold if held_out else frozenset())
                if fusion == "id":
                    ids[held_out] = models[held_out]
            runs.append(_measure(label, fusion, alpha, seed, models, split, cold))
            log(_summary_line(runs[-1]))
    return Ablation(runs, data, cold_fraction, cold_seed, len(dataset.items))


def _measure(
    label: str,
    fusion: str,
    alpha: float,
    seed: int,
    models: dict[bool, Trained],
    split: Split,
    cold: frozenset[str],
) -> Run:
    full = models[False]
    with torch.inference_mode(False):
        warm = measure_warm(full.bundle, split)
        cold_m = measure_cold(models[True].bundle, split, cold) if True in models else None
    r = full.result
    return Run(
        label=label,
        fusion=fusion,
        alpha=alpha,
        seed=seed,
        warm=warm,
        cold=cold_m,
        valid=r.valid_metrics,
        best_epoch=r.best_epoch,
        epochs_run=r.epochs_run,
        seconds=r.seconds,
        seconds_to_best=r.seconds_to_best,
        seconds_per_epoch=r.seconds / max(r.epochs_run, 1),
        curve=[row.valid.get("ndcg@10", float("nan")) for row in r.history],
        rerank=bool(full.bundle.model.use_head),
    )


def _summary_line(run: Run) -> str:
    w = run.warm.ranks[("warm", "test")].metrics()
    text = (
        f"seed {run.seed} {run.label}: test ndcg@10 {w['ndcg@10']:.4f} recall@20 "
        f"{w['recall@20']:.4f} (best epoch {run.best_epoch}, {run.seconds:.0f} s)"
    )
    if run.cold is not None:
        c = run.cold.ranks[("cold", "test")].metrics()
        text += f"; cold recall@20 {c['recall@20']:.4f}, share {run.cold.cold_share['test']:.3f}"
    return text
