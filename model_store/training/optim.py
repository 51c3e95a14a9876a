"""Optimisation pieces of the training loop: batch size, optimizer, sampled-softmax log Q,
the weight average."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.text.lora import LoraText
from model_store.training.prepare import Batch, Prepared

AUTO_MIN_STEPS = 128


def batch_size_for(requested: int, n_windows: int, *, lm_in_loop: bool = False) -> int:
    """``train.batch_size``, or for 0 (auto) the largest power of two in [16, 128] that
    leaves at least ``AUTO_MIN_STEPS`` optimizer steps per epoch; 128 when every step runs
    the language model (``lora`` mode), whose forward pass then dominates a step."""
    if requested > 0:
        return requested
    if lm_in_loop:
        return 128
    size = 16
    while size < 128 and n_windows // (2 * size) >= AUTO_MIN_STEPS:
        size *= 2
    return size


def fused_adam(device: torch.device) -> bool:
    """AdamW's fused kernel (one call for every parameter) where torch has one: with it and
    the one-call weight average a MovieLens epoch on 2 CPU cores took 23 % less time
    (``bench/train_step.py``, docs/BENCHMARKS.md)."""
    return device.type in ("cpu", "cuda")


def sampler_log_q(cfg: Config, prep: Prepared, data: Batch, batch_size: int) -> torch.Tensor | None:
    """log Q of each item under the sampled softmax (None: the catalog takes the full one).

    Each candidate appears in a batch with probability ≈ in-batch share + K/N."""
    tr = cfg.train
    if prep.n_items <= tr.full_softmax_max_items:
        return None
    freq = torch.from_numpy(prep.counts / max(prep.counts.sum(), 1.0))
    tokens = float((data.targets > 0).sum()) / len(data.targets) * batch_size
    q = (1 - (1 - freq) ** tokens) + tr.num_negatives / prep.n_items
    return torch.log(q.clamp(min=1e-12, max=1.0)).float()


class WeightAverage:
    """An exponential moving average of the parameters, updated after every step. From
    random weights it warms up (early averages do not drag the random initial weights
    along); from trained ones (``warm``: a warm start) it holds its full decay from the
    first step, so a fresh optimizer's first, large steps cannot drag the trained weights
    away."""

    def __init__(
        self, params: list[torch.nn.Parameter], decay: float, *, warm: bool = False
    ) -> None:
        self.params = params
        self.decay = decay
        self.warm = warm
        self.values = [p.detach().clone() for p in params]
        self.steps = 0

    def update(self) -> None:
        decay = self.decay if self.warm else min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        with torch.no_grad():
            torch._foreach_lerp_(self.values, list(self.params), 1.0 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the duration of the block."""
        held = [p.detach().clone() for p in self.params]
        self._load(self.values)
        try:
            yield
        finally:
            self._load(held)

    def load_into_model(self) -> None:
        self._load(self.values)

    def _load(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, values, strict=True):
                p.copy_(v)


def make_optimizer(
    cfg: Config, model: FusedModel, device: torch.device, lora: LoraText | None
) -> torch.optim.Optimizer:
    tr = cfg.train
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": tr.lr}]
    if lora is not None:
        trainable = [p for p in lora.parameters() if p.requires_grad]
        groups.append({"params": trainable, "lr": tr.lr / 4})
    return torch.optim.AdamW(groups, weight_decay=tr.weight_decay, fused=fused_adam(device))
