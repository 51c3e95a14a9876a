"""Training a model: epochs with validation, the best-epoch choice, then the cold tower and
the fusion head.

Each epoch (``loop.Loop.epoch``) cuts fresh history windows (``prepare.windows``, jittered
after the first), shuffles them and takes one ``step.train_step`` per batch: L_RS
(+ α·L_LM), backward, gradient clipping, AdamW (fused where torch has it), and an
exponential moving average of the weights (``WeightAverage``). The averaged weights are
validated (full-ranking NDCG@10 on each user's held-out item) and ``epochs.BestEpoch`` keeps
the epoch whose score, averaged with its neighbours' (``train.select_window``), is highest,
stopping after ``train.patience`` epochs without a better one. Then the cold tower
(``coldstart.fit_cold_tower``) and the fusion head (``head.fit_head``) are fitted.

Under torchrun (``model_store.training.distributed``) the step runs through
DistributedDataParallel: every rank cuts the same windows and draws the same permutation (a
common seed), takes its shard of each epoch (``rank::world`` of the permutation, padded to
equal length, so every rank takes the same number of steps) and ``train.batch_size`` stays
the windows of one optimizer step over all ranks. Gradients are averaged across ranks, so
the weights, the weight average and the full softmax (each rank scores the whole catalog)
stay exact and identical on every rank. Rank 0 validates and broadcasts the figures, so
every rank makes the same early-stopping decision; rank 0 alone fits the cold tower and the
head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model_store.bundle.manifest import ColdInfo, RerankInfo
from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.model.scoring import EvalSet, evaluate, metrics_from_ranks, rank_targets
from model_store.text.lm import pick_device
from model_store.text.lora import LoraText
from model_store.training import distributed as dist_mod
from model_store.training.coldstart import fit_cold_tower
from model_store.training.epochs import BestEpoch, Candidate, EpochRow
from model_store.training.head import fit_head
from model_store.training.loop import Loop
from model_store.training.prepare import Prepared, seed_everything
from model_store.training.warm import WarmStart, warm_start

log = logging.getLogger("fusionrec.train")

OnEpoch = Callable[[EpochRow], None]


@dataclass
class TrainResult:
    """The trained model with how it got there (its manifest's ``metrics``, ``rerank``,
    ``cold``)."""

    model: FusedModel
    best_epoch: int
    epochs_run: int
    history: list[EpochRow]
    valid_metrics: dict[str, float]
    seconds: float
    seconds_to_best: float
    rerank: RerankInfo
    cold: ColdInfo
    batch_size: int = 0


def build_model(cfg: Config, prep: Prepared, device: torch.device) -> FusedModel:
    text = torch.from_numpy(
        np.concatenate([np.zeros((1, prep.text_emb.shape[1]), np.float32), prep.text_emb])
    )
    has_id = torch.from_numpy(prep.counts > 0)
    log_pop = torch.from_numpy(np.log1p(prep.counts))
    return FusedModel(cfg.model, text, has_id, log_pop).to(device)


def validation_set(cfg: Config, prep: Prepared) -> EvalSet | None:
    """The held-out validation users, sampled down to ``train.max_eval_users``."""
    valid = prep.valid
    if valid is None or not len(valid):
        return None
    cap = cfg.train.max_eval_users
    if cap and len(valid) > cap:
        keep = np.sort(np.random.default_rng(cfg.train.seed).choice(len(valid), cap, replace=False))
        valid = EvalSet([valid.histories[i] for i in keep], [valid.targets[i] for i in keep])
    return valid


def fit(
    cfg: Config,
    prep: Prepared,
    *,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
    lora: LoraText | None = None,
    init: WarmStart | None = None,
) -> TrainResult:
    """Train the retriever (and the fusion head); returns the best-epoch model. With
    ``init`` training starts from its weights (:mod:`model_store.training.warm`)."""
    tr = cfg.train
    seed_everything(tr.seed)
    model = build_model(cfg, prep, pick_device(tr.device))
    if init is not None:
        log.info("%s", warm_start(model, prep.item_ids, init).describe())
    t0 = time.perf_counter()
    valid = validation_set(cfg, prep)
    if cfg.model.fusion == "text":  # zero-shot: nothing to train
        metrics = evaluate(model, valid)["all"] if valid is not None else {}
        info = RerankInfo(enabled=False, reason="text fusion is zero-shot")
        cold = ColdInfo(enabled=False, reason="text fusion is zero-shot")
        return TrainResult(model, 0, 0, [], metrics, time.perf_counter() - t0, 0.0, info, cold)
    loop = Loop.start(cfg, prep, model, lora, warm=init is not None)
    history, best = run_epochs(
        loop,
        valid,
        tr.epochs if epochs is None else epochs,
        on_epoch=on_epoch,
        t0=t0,
        warm=init is not None,
    )
    loop.restore(best.snapshot)
    if not loop.ranks.main:  # rank 0 finishes the model and publishes it
        off = "fitted on rank 0"
        return TrainResult(
            model, best.epoch, len(history), history, {}, time.perf_counter() - t0,
            best.row.seconds, RerankInfo(enabled=False, reason=off),
            ColdInfo(enabled=False, reason=off), loop.batch_size,
        )  # fmt: skip
    cold = fit_cold_tower(model, cfg, prep, valid)
    valid_metrics = dict(best.row.valid)
    if cold.enabled and valid is not None:  # the figures of the model as it is published
        valid_metrics = validation_metrics(model, valid, prep.n_items)
    rerank, valid_metrics = fit_rerank(model, cfg, valid, valid_metrics)
    seconds = time.perf_counter() - t0
    return TrainResult(
        model, best.epoch, len(history), history, valid_metrics, seconds,
        best.row.seconds, rerank, cold, loop.batch_size,
    )  # fmt: skip


def run_epochs(
    loop: Loop,
    valid: EvalSet | None,
    epochs: int,
    *,
    on_epoch: OnEpoch | None,
    t0: float,
    warm: bool = False,
) -> tuple[list[EpochRow], Candidate]:
    """Up to ``epochs`` epochs, each validated (averaged weights) and offered to
    ``BestEpoch``, until it says stop → (every epoch's row, the chosen epoch). ``warm``: the
    model starts from trained weights, which are validated and offered first, as epoch 0
    (not a row of the history)."""
    tr = loop.cfg.train
    chooser = BestEpoch(
        tr.select_window if valid is not None else 1,
        tr.patience if valid is not None else None,
        loop.snapshot(),
    )
    if warm and valid is not None:
        start = EpochRow(0, 0.0, 0.0)
        score = _validate(loop, valid, start)
        log.info("starting weights (warm start): valid_ndcg@10 %.4f", score)
        chooser.add(Candidate(0, loop.snapshot(), start), score)
    history: list[EpochRow] = []
    for epoch in range(1, epochs + 1):
        row = loop.epoch(epoch)
        with loop.evaluated():
            # no holdout: the last epoch is the one kept
            score = _validate(loop, valid, row) if valid is not None else float(epoch)
            row.seconds = time.perf_counter() - t0
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            stop = chooser.add(Candidate(epoch, loop.snapshot(), row), score)
        if stop:
            break
    return history, chooser.finish()


def _validate(loop: Loop, valid: EvalSet, row: EpochRow) -> float:
    """The model's validation metrics into ``row`` → its NDCG@10."""
    m: dict[str, float] | None = None
    if loop.ranks.main:  # the weights are the same on every rank: one evaluates
        m = validation_metrics(loop.model, valid, loop.prep.n_items)
    m = dist_mod.broadcast(m)
    assert m is not None
    row.valid = m
    return m["ndcg@10"]


def validation_metrics(model: FusedModel, valid: EvalSet, n_items: int) -> dict[str, float]:
    """Full-ranking metrics of the retriever alone (no head) on the validation users."""
    m = metrics_from_ranks(*rank_targets(model, valid, use_head=False), n_items)
    return {k: v for k, v in m.items() if k != "users"}


def fit_rerank(
    model: FusedModel, cfg: Config, valid: EvalSet | None, valid_metrics: dict[str, float]
) -> tuple[RerankInfo, dict[str, float]]:
    """The fusion head when configured and provable; the validation figures to report."""
    if not cfg.train.rerank:
        return RerankInfo(enabled=False, reason="disabled in config"), valid_metrics
    if valid is None:
        reason = "no validation holdout to prove the head helps"
        return RerankInfo(enabled=False, reason=reason), valid_metrics
    result = fit_head(model, cfg, valid)
    if result.info.enabled and result.valid_with_head is not None:
        return result.info, dict(result.valid_with_head)
    return result.info, valid_metrics
