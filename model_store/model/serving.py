"""Inference caches of the fused model: what serving computes once per catalog, not per call.

Both are keyed on what they were computed from (tensor identities, version counters, the
model's ``catalog_version``) and rebuilt when it changes; in training mode neither is used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from model_store.model.rerank import Reranker, RerankTable, trace_reranker

if TYPE_CHECKING:
    from model_store.model.fused import FusedModel

log = logging.getLogger(__name__)


class InferenceCache:
    """The projected text table and the traced user encoder of one ``FusedModel``."""

    def __init__(self) -> None:
        # ((text_emb, has_id), versions, table): see text_part_table
        self._text_part: (
            tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, ...], torch.Tensor] | None
        ) = None
        # (key, encoder): see serving_encoder
        self._encoder: tuple[tuple[object, ...], Callable[[torch.Tensor], torch.Tensor]] | None = (
            None
        )
        # (key, table): see rerank_table
        self._rerank: tuple[tuple[object, ...], RerankTable] | None = None
        # (key, reranker): see serving_reranker
        self._reranker: tuple[tuple[object, ...], Reranker] | None = None
        # (modules, their parameters): see _params
        self._modules: tuple[tuple[nn.Module | None, ...], list[torch.Tensor]] | None = None

    def _params(self, model: FusedModel) -> list[torch.Tensor]:
        """The parameters of the towers and the head, listed once per set of modules
        (``Module.parameters()`` walks the tree: ~15 µs on every request otherwise)."""
        items = model.items
        modules: tuple[nn.Module | None, ...] = (
            items.text_proj,
            items.id_emb,
            items.cold,
            model.head,
        )
        cached = self._modules
        if cached is None or any(a is not b for a, b in zip(cached[0], modules, strict=True)):
            params: list[torch.Tensor] = [
                p for m in modules if m is not None for p in m.parameters()
            ]
            cached = (modules, params)
            self._modules = cached
        return cached[1]

    def text_part_table(self, model: FusedModel) -> torch.Tensor | None:
        """The text side (``FusedModel.content``) of every catalog item of ``model``
        (N+1, D) for inference, computed once.

        Serving projects the same catalog rows again and again (a user's history items on
        every cache miss, ~200 candidates per rerank): at 32 users × 50 history items the
        projection was half of ``user_vectors``' time. The table is rebuilt whenever
        ``text_emb`` or ``has_id`` is replaced or edited in place or the towers' weights
        change (tensor version counters); None in training mode (gradients flow through the
        projection there) and when versions cannot be read (inference tensors).
        """
        if model.training or model.cfg.fusion != "joint":
            return None
        params = self._params(model)  # the head's too: a retrained head rebuilds it (rare)
        try:
            key = (model.text_emb._version, model.has_id._version, *(p._version for p in params))
        except RuntimeError:  # inference tensors carry no version counter
            return None
        cached = self._text_part
        if (
            cached is not None
            and cached[0][0] is model.text_emb
            and cached[0][1] is model.has_id
            and cached[1] == key
        ):
            return cached[2]
        with torch.no_grad():
            table = model.content(torch.arange(model.n_items + 1, device=model.text_emb.device))
        self._text_part = ((model.text_emb, model.has_id), key, table)
        return table

    def rerank_table(self, model: FusedModel) -> RerankTable | None:
        """The per-item parts of the fusion head's features (``RerankTable``), computed once
        per catalog and weights; None in training, for fusions other than ``joint`` and
        when the text table is unavailable."""
        text_part = self.text_part_table(model)
        if text_part is None:
            return None
        weight = model.items.id_emb.weight
        key = (
            model.catalog_version,
            text_part,
            weight,
            weight._version,
            model.has_id,
            model.log_pop,
            model.text_emb,
        )
        cached = self._rerank
        if cached is not None and _same(cached[0], key):
            return cached[1]
        table = RerankTable.build(model, text_part)
        self._rerank = (key, table)
        return table

    def serving_reranker(self, model: FusedModel) -> Reranker:
        """``model.rerank`` for the service: with the per-item table traced into one call
        (``rerank.trace_reranker``; the GIL is released for the whole head, as for the
        encoder), rebuilt when the table, the head or its weights change; eager otherwise."""
        table = self.rerank_table(model)
        # the table is rebuilt when any tower or head weight changes (``text_part_table``)
        key = (model.use_head, table, model.head)
        cached = self._reranker
        if cached is not None and _same(cached[0], key):
            return cached[1]
        reranker: Reranker = model.rerank
        if table is not None and model.use_head:
            reranker = trace_reranker(model, table)
        self._reranker = (key, reranker)
        return reranker

    def serving_encoder(self, model: FusedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """``model.user_vectors`` for inference, as one TorchScript call where it can be traced.

        Eager PyTorch releases the GIL inside each op and must take it back after each of the
        forward's ~100 small ops. In the service the event-loop thread holds the GIL most of
        the time, so the encoder thread queued for it op after op and the two threads
        together never used more than one core (measured: 1.05 cores at saturation). The
        traced forward runs its whole graph in one call without the GIL: +30 % saturated
        cache-miss throughput (docs/BENCHMARKS.md).

        The trace is checked against eager ``user_vectors`` on an input of another shape
        before use and is rebuilt after any catalog change (tensor identities and
        ``catalog_version`` are its key); training mode, a failed trace or check, or a
        torch without ``torch.jit`` (deprecated in recent torch) fall back to eager.
        """
        key = (
            model.training,
            model.catalog_version,
            model.text_emb,
            model.has_id,
            model.items.id_emb.weight,
        )
        cached = self._encoder
        if cached is not None and _same(cached[0], key):
            return cached[1]
        encoder = model.user_vectors if model.training else trace_user_vectors(model)
        self._encoder = (key, encoder)
        return encoder


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Cache keys: tensors, modules and tables by identity, the rest by value."""
    return len(a) == len(b) and all(
        x is y if isinstance(x, torch.Tensor | nn.Module | RerankTable) else x == y
        for x, y in zip(a, b, strict=True)
    )


def trace_user_vectors(model: FusedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.user_vectors`` traced and checked against eager on another shape; eager
    itself when tracing fails or differs."""
    n, max_len = model.n_items, model.cfg.max_len
    if n == 0 or not hasattr(torch, "jit"):
        return model.user_vectors
    dev = model.text_emb.device
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(1, n + 1, (2, min(max_len, 4)), generator=gen).to(dev)
    probe = torch.randint(1, n + 1, (3, min(max_len, 9)), generator=gen).to(dev)
    probe[0, : probe.shape[1] // 2] = 0  # left padding, as in service batches
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace's deprecation and tracer warnings
            # the projected text table enters the trace as a constant (computed here,
            # not traced: a traced computation would project the catalog per call)
            model.text_part_table()
            trace: Callable[..., Callable[[torch.Tensor], torch.Tensor]] = torch.jit.trace
            traced = trace(_UserVectors(model), (example,), check_trace=False)
            same = torch.allclose(traced(probe), model.user_vectors(probe), rtol=1e-4, atol=1e-5)
    except Exception as exc:  # any failure means: serve eager
        log.warning("user encoder not traced (%s); serving it eagerly", exc)
        return model.user_vectors
    if not same:
        log.warning("traced user encoder differs from eager; serving it eagerly")
        return model.user_vectors
    return traced


class _UserVectors(nn.Module):
    """``FusedModel.user_vectors`` as a module's forward, the shape ``torch.jit.trace`` takes."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.model.user_vectors(hist)
