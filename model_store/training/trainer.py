"""The optimisation loop: one ``train_step``, epochs with validation, the best-epoch choice.

Each epoch cuts fresh history windows (``prepare.windows``, jittered after the first),
shuffles them and takes one ``train_step`` per batch: L_RS (+ α·L_LM), backward, gradient
clipping, AdamW (fused where torch has it), and an exponential moving average of the
weights (``WeightAverage``). The averaged weights are validated (full-ranking NDCG@10 on
each user's held-out item) and ``BestEpoch`` keeps the epoch whose score, averaged with its
neighbours' (``train.select_window``), is highest, stopping after ``train.patience``
epochs without a better one. Then the fusion head is fitted (``head.fit_head``).

Under torchrun (``model_store.training.distributed``) the step runs through DistributedDataParallel:
every rank cuts the same windows and draws the same permutation (a common seed), takes its
shard of each epoch (``rank::world`` of the permutation, padded to equal length, so every
rank takes the same number of steps) and ``train.batch_size`` stays the windows of one
optimizer step over all ranks. Gradients are averaged across ranks, so the weights, the
weight average and the full softmax (each rank scores the whole catalog) stay exact and
identical on every rank. Rank 0 validates and broadcasts the figures, so every rank makes
the same early-stopping decision; rank 0 alone fits the cold tower and the head.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_store.bundle.manifest import ColdInfo, RerankInfo
from model_store.config import Config
from model_store.errors import ConfigError
from model_store.model.fused import FusedModel
from model_store.model.scoring import EvalSet, evaluate, metrics_from_ranks, rank_targets
from model_store.text.lm import pick_device
from model_store.text.lora import LoraText
from model_store.training import distributed as dist_mod
from model_store.training.coldstart import fit_cold_tower
from model_store.training.head import fit_head
from model_store.training.losses import align_loss, rs_loss
from model_store.training.optim import (
    WeightAverage,
    batch_size_for,
    make_optimizer,
    sampler_log_q,
)
from model_store.training.prepare import (
    Batch,
    Prepared,
    crop,
    seed_everything,
    windows,
    with_earlier,
)

OnEpoch = Callable[[dict[str, float]], None]


@dataclass
class TrainResult:
    model: FusedModel
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
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


@dataclass
class Candidate:
    epoch: int
    snapshot: dict[str, Any]
    row: dict[str, float]


@dataclass
class BestEpoch:
    """Chooses the epoch whose validation score, averaged over ``window`` epochs centred on
    it, is highest (one epoch's figure over ~1,000 users is noisy); an epoch is judged once
    the ``window // 2`` epochs after it are in. ``patience`` judged epochs without a new best
    stop training (None: never)."""

    window: int
    patience: int | None
    initial: dict[str, Any]
    scores: list[float] = field(default_factory=list)
    best_score: float = -1.0
    best: Candidate | None = None
    _waiting: collections.deque[Candidate] = field(default_factory=collections.deque)
    _bad: int = 0

    def add(self, candidate: Candidate, score: float) -> bool:
        """Record an epoch; True when training should stop."""
        self.scores.append(score)
        self._waiting.append(candidate)
        if len(self._waiting) <= self.window // 2:
            return False
        if self._judge(self._waiting.popleft()):
            self._bad = 0
            return False
        self._bad += 1
        return self.patience is not None and self._bad >= self.patience

    def finish(self) -> Candidate:
        """Judge the last epochs by the neighbours they have; the chosen one."""
        while self._waiting:
            self._judge(self._waiting.popleft())
        return self.best or Candidate(0, self.initial, {"seconds": 0.0})

    def _judge(self, c: Candidate) -> bool:
        half = self.window // 2
        near = self.scores[max(0, c.epoch - 1 - half) : c.epoch + half]
        smoothed = sum(near) / len(near)
        if smoothed > self.best_score:
            self.best_score, self.best = smoothed, c
            return True
        return False


class StepLoss(torch.nn.Module):
    """L_RS (+ α·L_LM) of a batch as a module's forward: what DistributedDataParallel wraps,
    so that the backward pass averages the gradients across ranks (frozen text mode)."""

    def __init__(self, model: FusedModel, cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self, batch: Batch, sampler_logq: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        tr = self.cfg.train
        l_rs = rs_loss(self.model, batch, self.cfg, sampler_logq)
        l_lm = None
        if self.cfg.model.fusion == "joint" and tr.alpha > 0:
            l_lm = align_loss(self.model, batch, tr.align_temperature)
        loss = l_rs if l_lm is None else l_rs + tr.alpha * l_lm
        return loss, l_rs, l_lm


def distributed_step_module(model: FusedModel, cfg: Config) -> torch.nn.Module:
    """``StepLoss`` wrapped in DistributedDataParallel (the process group must be up)."""
    from torch.nn.parallel import DistributedDataParallel

    # buffers (the catalog's text embeddings) are equal on every rank and never change in
    # training: not re-broadcast at every step
    return DistributedDataParallel(
        StepLoss(model, cfg), broadcast_buffers=False, find_unused_parameters=True
    )


def train_step(
    model: FusedModel,
    batch: Batch,
    cfg: Config,
    opt: torch.optim.Optimizer,
    *,
    sampler_logq: torch.Tensor | None,
    lora: LoraText | None = None,
    ddp: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One optimisation step on ``batch``; returns its loss parts. ``ddp``: the
    ``distributed_step_module`` of ``model`` (gradients averaged across ranks)."""
    tr = cfg.train
    parts = {"loss_rs": 0.0, "loss_lm": 0.0}
    l_lm: torch.Tensor | None = None
    if ddp is not None:
        loss, l_rs, l_lm = ddp(batch, sampler_logq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        parts["loss_rs"] = float(l_rs.detach())
        if l_lm is not None:
            parts["loss_lm"] = float(l_lm.detach())
        return parts
    if lora is not None:
        # re-encode this batch's target items with gradients; others use the cache
        idx = torch.unique(batch.targets[batch.targets > 0])
        idx = idx[torch.randperm(len(idx), device=idx.device)[: cfg.text.batch_size]]
        model.text_emb = model.text_emb.detach().index_put((idx,), lora.embed(idx))
        l_lm = lora.mlm_loss(idx[:32])
    l_rs = rs_loss(model, batch, cfg, sampler_logq)
    if lora is None and cfg.model.fusion == "joint" and tr.alpha > 0:
        l_lm = align_loss(model, batch, tr.align_temperature)
    loss = l_rs if l_lm is None else l_rs + tr.alpha * l_lm
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    if lora is not None:
        model.text_emb = model.text_emb.detach()
    parts["loss_rs"] = float(l_rs.detach())
    if l_lm is not None:
        parts["loss_lm"] = float(l_lm.detach())
    return parts


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


@dataclass
class Loop:
    """The state of one training run between epochs: what ``fit`` steps through."""

    cfg: Config
    prep: Prepared
    model: FusedModel
    device: torch.device
    lora: LoraText | None
    future: int  # targets per position (multi-target loss; 1 under a sampled softmax)
    batch_size: int
    sampler_logq: torch.Tensor | None
    opt: torch.optim.Optimizer
    average: WeightAverage | None
    data: Batch
    gen: torch.Generator
    jitter: np.random.Generator
    ranks: dist_mod.Ranks = field(default_factory=dist_mod.Ranks)
    ddp: torch.nn.Module | None = None

    @property
    def rank_batch(self) -> int:
        """Windows per step on this rank: its share of the (global) batch size."""
        return math.ceil(self.batch_size / self.ranks.world)

    @classmethod
    def start(cls, cfg: Config, prep: Prepared, model: FusedModel, lora: LoraText | None) -> Loop:
        tr = cfg.train
        device = model.text_emb.device
        # the multi-target loss is a full-softmax one; a sampled softmax predicts the next item
        future = tr.future_targets if prep.n_items <= tr.full_softmax_max_items else 1
        data = windows(prep.sequences, prep.weights, cfg.model.max_len, future=future)
        batch_size = batch_size_for(tr.batch_size, len(data.inputs), lm_in_loop=lora is not None)
        logq = sampler_log_q(cfg, prep, data, batch_size)
        if lora is not None:
            lora.to(device)
            lora.train()
        params = list(model.parameters())
        ranks = dist_mod.current()
        ddp = None
        if ranks.distributed:
            if lora is not None:
                raise ConfigError("text.mode=lora is not supported with more than one process")
            ddp = distributed_step_module(model, cfg)
            # the same data order on every rank (common seed), but dropout and sampled
            # negatives of its own
            torch.manual_seed(tr.seed + 7919 * ranks.rank)
        return cls(
            cfg,
            prep,
            model,
            device,
            lora,
            future,
            batch_size,
            None if logq is None else logq.to(device),
            make_optimizer(cfg, model, device, lora),
            WeightAverage(params, tr.ema_decay) if tr.ema_decay > 0 else None,
            data,
            torch.Generator().manual_seed(tr.seed),
            np.random.default_rng(tr.seed),
            ranks,
            ddp,
        )

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the windows (cut afresh, jittered, after the first) → mean losses."""
        prep, cfg = self.prep, self.cfg
        self.model.train()
        if epoch > 1:
            self.data = windows(
                prep.sequences, prep.weights, cfg.model.max_len, self.jitter, future=self.future
            )
        perm = torch.randperm(len(self.data.inputs), generator=self.gen)
        step = self.batch_size
        if self.ranks.distributed:
            perm = shard(perm, self.ranks)
            step = self.rank_batch
        sums = {"loss_rs": 0.0, "loss_lm": 0.0}
        steps = 0
        for s in range(0, len(perm), step):
            batch = self.data.take(perm[s : s + step])
            if cfg.train.crop_rate > 0:
                batch = crop(batch, cfg.train.crop_rate, cfg.train.crop_max, self.gen)
            if self.sampler_logq is None:
                batch = with_earlier(batch, prep.sequences)
            parts = train_step(
                self.model,
                batch.to(self.device),
                cfg,
                self.opt,
                sampler_logq=self.sampler_logq,
                lora=self.lora,
                ddp=self.ddp,
            )
            if self.average is not None:
                self.average.update()
            for k, v in parts.items():
                sums[k] += v
            steps += 1
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        if self.ranks.distributed:  # the epoch's losses over all ranks' windows
            means = dist_mod.mean_over_ranks(means)
        return {"epoch": float(epoch), **means}

    def evaluated(self) -> contextlib.AbstractContextManager[None]:
        """The weights to validate and keep: the averaged ones when averaging is on."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def snapshot(self) -> dict[str, Any]:
        snap = {"model": copy.deepcopy(self.model.state_dict())}
        if self.lora is not None:
            snap["lora"] = {k: v.detach().clone() for k, v in self.lora.state_dict().items()}
        return snap

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load the chosen epoch's weights (and re-encode the catalog with a tuned LM)."""
        self.model.load_state_dict(snapshot["model"])
        if self.lora is not None:
            self.lora.load_state_dict(snapshot["lora"])
            text = torch.from_numpy(self.lora.encode_all(self.cfg.text.batch_size))
            text = text.to(self.device)
            self.model.text_emb = torch.cat([torch.zeros_like(text[:1]), text])
        self.model.eval()


def shard(perm: torch.Tensor, ranks: dist_mod.Ranks) -> torch.Tensor:
    """This rank's windows of the epoch's permutation: ``rank::world``, the permutation
    padded from its start to a multiple of ``world`` so that every rank gets as many (as
    torch's DistributedSampler does)."""
    pad = (-len(perm)) % ranks.world
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[ranks.rank :: ranks.world]


def fit(
    cfg: Config,
    prep: Prepared,
    *,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
    lora: LoraText | None = None,
) -> TrainResult:
    """Train the retriever (and the fusion head); returns the best-epoch model."""
    tr = cfg.train
    seed_everything(tr.seed)
    model = build_model(cfg, prep, pick_device(tr.device))
    t0 = time.perf_counter()
    valid = validation_set(cfg, prep)
    if cfg.model.fusion == "text":  # zero-shot: nothing to train
        metrics = evaluate(model, valid)["all"] if valid is not None else {}
        info = RerankInfo(enabled=False, reason="text fusion is zero-shot")
        cold = ColdInfo(enabled=False, reason="text fusion is zero-shot")
        return TrainResult(model, 0, 0, [], metrics, time.perf_counter() - t0, 0.0, info, cold)
    loop = Loop.start(cfg, prep, model, lora)
    chooser = BestEpoch(
        tr.select_window if valid is not None else 1,
        tr.patience if valid is not None else None,
        loop.snapshot(),
    )
    history: list[dict[str, float]] = []
    ranks = loop.ranks
    for epoch in range(1, (tr.epochs if epochs is None else epochs) + 1):
        row = loop.epoch(epoch)
        with loop.evaluated():
            score = float(epoch)  # no holdout: the last epoch is the one kept
            if valid is not None:
                m: dict[str, float] | None = None
                if ranks.main:  # the weights are the same on every rank: one evaluates
                    m = metrics_from_ranks(
                        *rank_targets(model, valid, use_head=False), prep.n_items
                    )
                m = dist_mod.broadcast(m)
                assert m is not None
                row.update({f"valid_{k}": v for k, v in m.items() if k != "users"})
                score = m["ndcg@10"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            stop = chooser.add(Candidate(epoch, loop.snapshot(), row), score)
        if stop:
            break
    best = chooser.finish()
    loop.restore(best.snapshot)
    if not ranks.main:  # rank 0 finishes the model and publishes it
        off = "fitted on rank 0"
        return TrainResult(
            model, best.epoch, len(history), history, {}, time.perf_counter() - t0,
            best.row["seconds"], RerankInfo(enabled=False, reason=off),
            ColdInfo(enabled=False, reason=off), loop.batch_size,
        )  # fmt: skip
    cold = fit_cold_tower(model, cfg, prep, valid)
    valid_metrics = {
        k.removeprefix("valid_"): v for k, v in best.row.items() if k.startswith("valid_")
    }
    if cold.enabled and valid is not None:  # the figures of the model as it is published
        m = metrics_from_ranks(*rank_targets(model, valid, use_head=False), prep.n_items)
        valid_metrics = {k: v for k, v in m.items() if k != "users"}
    rerank, valid_metrics = fit_rerank(model, cfg, valid, valid_metrics)
    seconds = time.perf_counter() - t0
    return TrainResult(
        model, best.epoch, len(history), history, valid_metrics, seconds,
        best.row["seconds"], rerank, cold, loop.batch_size,
    )  # fmt: skip


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
