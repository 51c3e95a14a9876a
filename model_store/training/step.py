"""One optimisation step: L_RS (+ α·L_LM), backward, gradient clipping, the optimizer.

Under torchrun the losses run inside DistributedDataParallel (``StepLoss``), so that the
backward pass averages the gradients across ranks; with a LoRA-tuned LM (one process only)
the batch's target items are re-encoded with gradients first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.text.lora import LoraText
from model_store.training.losses import align_loss, rs_loss
from model_store.training.prepare import Batch

Losses3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class StepLosses:
    """The loss parts of one step (L_LM is 0 when there is none)."""

    loss_rs: float
    loss_lm: float


def fused_loss(
    model: FusedModel,
    batch: Batch,
    cfg: Config,
    sampler_logq: torch.Tensor | None,
    l_lm: torch.Tensor | None = None,
) -> Losses3:
    """(L_RS + α·L_LM, L_RS, L_LM): L_LM is ``l_lm`` when given (LoRA's masked-LM loss), else
    the ID-text alignment of ``joint`` with α > 0, else none."""
    tr = cfg.train
    l_rs = rs_loss(model, batch, cfg, sampler_logq)
    if l_lm is None and cfg.model.fusion == "joint" and tr.alpha > 0:
        l_lm = align_loss(model, batch, tr.align_temperature)
    loss = l_rs if l_lm is None else l_rs + tr.alpha * l_lm
    return loss, l_rs, l_lm


class StepLoss(torch.nn.Module):
    """``fused_loss`` as a module's forward: what DistributedDataParallel wraps, so that the
    backward pass averages the gradients across ranks (frozen text mode)."""

    def __init__(self, model: FusedModel, cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: Batch, sampler_logq: torch.Tensor | None) -> Losses3:
        return fused_loss(self.model, batch, self.cfg, sampler_logq)


def distributed_step_module(model: FusedModel, cfg: Config) -> torch.nn.Module:
    """``StepLoss`` wrapped in DistributedDataParallel (the process group must be up)."""
    from torch.nn.parallel import DistributedDataParallel

    # buffers (the catalog's text embeddings) are equal on every rank and never change in
    # training: not re-broadcast at every step
    return DistributedDataParallel(
        StepLoss(model, cfg), broadcast_buffers=False, find_unused_parameters=True
    )


def _lora_loss(
    model: FusedModel, batch: Batch, cfg: Config, sampler_logq: torch.Tensor | None, lora: LoraText
) -> Losses3:
    """Re-encode this batch's target items with gradients (the others use the cache); the
    masked-LM loss of a few of them is L_LM."""
    idx = torch.unique(batch.targets[batch.targets > 0])
    idx = idx[torch.randperm(len(idx), device=idx.device)[: cfg.text.batch_size]]
    model.text_emb = model.text_emb.detach().index_put((idx,), lora.embed(idx))
    return fused_loss(model, batch, cfg, sampler_logq, lora.mlm_loss(idx[:32]))


def train_step(
    model: FusedModel,
    batch: Batch,
    cfg: Config,
    opt: torch.optim.Optimizer,
    *,
    sampler_logq: torch.Tensor | None,
    lora: LoraText | None = None,
    ddp: torch.nn.Module | None = None,
) -> StepLosses:
    """One optimisation step on ``batch``; returns its loss parts. ``ddp``: the
    ``distributed_step_module`` of ``model`` (gradients averaged across ranks)."""
    if ddp is not None:
        loss, l_rs, l_lm = ddp(batch, sampler_logq)
    elif lora is not None:
        loss, l_rs, l_lm = _lora_loss(model, batch, cfg, sampler_logq, lora)
    else:
        loss, l_rs, l_lm = fused_loss(model, batch, cfg, sampler_logq)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    if ddp is None and lora is not None:
        model.text_emb = model.text_emb.detach()
    return StepLosses(float(l_rs.detach()), 0.0 if l_lm is None else float(l_lm.detach()))
