"""The fusion head at inference: per-item parts precomputed, the whole rerank traced.

``RerankTable`` holds what the head's features need of each catalog item, so a request's
features are a dozen batched tensor operations over its candidates, whatever their number;
``trace_reranker`` traces features + head + the cold-item rule into one TorchScript call.
Both are built by ``model_store.model.serving.InferenceCache`` once per catalog and weights.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from model_store.model.fused import FusedModel

log = logging.getLogger(__name__)
Reranker = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RerankTable:
    """What the fusion head's features need of each catalog item, gathered with one index
    per request instead of recomputed: ``parts`` (N+1, 2, D) the ID part and the text part
    of each item vector, ``log_pop`` (N+1,) and ``text`` (N+1, T) the LM embeddings (the
    model's own buffer, not a copy); ``all_trained``: no item lacks a trained ID."""

    def __init__(
        self, parts: torch.Tensor, log_pop: torch.Tensor, text: torch.Tensor, all_trained: bool
    ) -> None:
        self.parts = parts
        self.log_pop = log_pop
        self.text = text
        self.all_trained = all_trained

    @classmethod
    def build(cls, model: FusedModel, text_part: torch.Tensor) -> RerankTable:
        with torch.no_grad():
            idx = torch.arange(model.n_items + 1, device=model.text_emb.device)
            id_part = model.items.id_part(idx, model.has_id)
            parts = torch.stack([id_part, text_part.to(id_part.dtype)], dim=1).contiguous()
        return cls(parts, model.log_pop, model.text_emb, bool(model.has_id[1:].all()))

    def features(
        self,
        hist: torch.Tensor,
        user: torch.Tensor,
        cand: torch.Tensor,
        retrieval: torch.Tensor,
        text_history: int,
    ) -> torch.Tensor:
        """``FusedModel.rerank_features`` of the ``joint`` fusion from the table: a dozen
        batched operations whatever the number of candidates → (B, N, 7)."""
        b, n = cand.shape
        d = self.parts.shape[2]
        dots = self.parts[cand] @ user[:, None, :d, None]  # (B, N, 2, 1): ID and text dots
        last = hist[:, -text_history:]
        sims = self.text[cand] @ self.text[last].transpose(1, 2)  # (B, N, h) text cosines
        valid = (last != 0).unsqueeze(1)
        max_sim = sims.masked_fill(~valid, -1.0).amax(-1, keepdim=True)
        mean_sim = (sims * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
        rank = torch.log1p(torch.arange(n, device=cand.device, dtype=torch.float32))
        return torch.cat(
            [
                retrieval.unsqueeze(-1),
                dots.view(b, n, 2),
                max_sim,
                mean_sim,
                self.log_pop[cand].unsqueeze(-1),
                rank.view(1, n, 1).expand(b, n, 1),
            ],
            dim=-1,
        )


def table_rerank(
    model: FusedModel,
    table: RerankTable,
    hist: torch.Tensor,
    user: torch.Tensor,
    cand: torch.Tensor,
    retrieval: torch.Tensor,
) -> torch.Tensor:
    """``FusedModel.rerank`` from the table, without data-dependent branches (traceable):
    an ID-less candidate keeps its retrieval score plus the median head correction of the
    candidates with IDs (a no-op where no candidate lacks an ID)."""
    fused: torch.Tensor = model.head(
        table.features(hist, user, cand, retrieval, model.cfg.text_history)
    )
    if table.all_trained:
        return fused
    cold = ~model.has_id[cand]
    shift = (fused - retrieval).masked_fill(cold, float("nan"))
    typical = torch.nanmedian(shift, dim=1, keepdim=True).values.nan_to_num(0.0)
    return torch.where(cold, retrieval + typical, fused)


class _Rerank(nn.Module):
    """``table_rerank`` as a module's forward, the shape ``torch.jit.trace`` takes."""

    def __init__(self, model: FusedModel, table: RerankTable) -> None:
        super().__init__()
        self.model = model
        self.table = table

    def forward(
        self, hist: torch.Tensor, user: torch.Tensor, cand: torch.Tensor, retrieval: torch.Tensor
    ) -> torch.Tensor:
        return table_rerank(self.model, self.table, hist, user, cand, retrieval)


def _example(model: FusedModel, b: int, length: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    dev = model.text_emb.device
    gen = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, model.n_items + 1, (b, length), generator=gen)
    hist[0, : length // 2] = 0  # left padding, as in service batches
    cand = torch.randint(1, model.n_items + 1, (b, n), generator=gen)
    retrieval = torch.randn(b, n, generator=gen).sort(dim=1, descending=True).values
    with torch.no_grad():
        user = model.user_vectors(hist.to(dev))
    return hist.to(dev), user, cand.to(dev), retrieval.to(dev)


def trace_reranker(model: FusedModel, table: RerankTable) -> Reranker:
    """``table_rerank`` traced, checked against eager ``model.rerank`` on other shapes;
    ``model.rerank`` itself when tracing fails or differs."""
    if model.n_items == 0 or not hasattr(torch, "jit"):
        return model.rerank
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace's deprecation and tracer warnings
            trace: Callable[..., Reranker] = torch.jit.trace
            traced = trace(_Rerank(model, table), _example(model, 2, 6, 7, 0), check_trace=False)
            probe = _example(model, 3, 9, 13, 1)
            same = torch.allclose(traced(*probe), model.rerank(*probe), rtol=1e-4, atol=1e-5)
    except Exception as exc:  # any failure means: serve eager
        log.warning("fusion head not traced (%s); serving it eagerly", exc)
        return model.rerank
    if not same:
        log.warning("traced fusion head differs from eager; serving it eagerly")
        return model.rerank
    return traced
