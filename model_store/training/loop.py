"""The state of one training run between epochs (``Loop``): the windows, the optimizer and
the weight average, one pass over the data per ``Loop.epoch``, and each rank's shard of it
under torchrun."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_store.config import Config
from model_store.errors import ConfigError
from model_store.model.fused import FusedModel
from model_store.text.lora import LoraText
from model_store.training import distributed as dist_mod
from model_store.training.epochs import EpochRow
from model_store.training.optim import (
    WeightAverage,
    batch_size_for,
    make_optimizer,
    sampler_log_q,
)
from model_store.training.prepare import Batch, Prepared, crop, windows, with_earlier
from model_store.training.step import distributed_step_module, train_step


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
    def start(
        cls,
        cfg: Config,
        prep: Prepared,
        model: FusedModel,
        lora: LoraText | None,
        *,
        warm: bool = False,
    ) -> Loop:
        """``warm``: ``model`` holds trained weights (a warm start), which the weight average
        starts from at its full decay."""
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
            WeightAverage(params, tr.ema_decay, warm=warm) if tr.ema_decay > 0 else None,
            data,
            torch.Generator().manual_seed(tr.seed),
            np.random.default_rng(tr.seed),
            ranks,
            ddp,
        )

    def epoch(self, epoch: int) -> EpochRow:
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
            sums["loss_rs"] += parts.loss_rs
            sums["loss_lm"] += parts.loss_lm
            steps += 1
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        if self.ranks.distributed:  # the epoch's losses over all ranks' windows
            means = dist_mod.mean_over_ranks(means)
        return EpochRow(epoch, means["loss_rs"], means["loss_lm"])

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
