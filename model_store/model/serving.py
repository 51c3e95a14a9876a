"""Inference caches of the fused model: what serving computes once per catalog, not per call.

The projected text table and the fusion head's per-item table (``RerankTable``) are keyed
on what they were computed from (tensor identities and version counters); a catalog change
made through ``FusedModel`` (items appended, texts edited) updates them row by row where
that is exact (``InferenceCache.following``), else they are rebuilt at their next use. The
traced user encoder and reranker take those tables and the catalog's tensors as inputs
(``encoder_trace``, ``rerank.trace_reranker``): traced once per set of weight modules, never
again for a catalog change. In training mode none of them is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from model_store.model.encoder_trace import Encoder, ServedEncoder, trace_user_vectors
from model_store.model.rerank import (
    Reranker,
    RerankTable,
    TracedRerank,
    catalog_inputs,
    trace_reranker,
)

if TYPE_CHECKING:
    from model_store.model.fused import FusedModel


class InferenceCache:
    """The projected text table, the rerank table and the traced encoder and reranker of
    one ``FusedModel``."""

    def __init__(self) -> None:
        # ((text_emb, has_id), versions, table): see text_part_table
        self._text_part: (
            tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, ...], torch.Tensor] | None
        ) = None
        # (key, encoder): see serving_encoder
        self._encoder: tuple[tuple[object, ...], Encoder] | None = None
        # (key, table): see rerank_table
        self._rerank: tuple[tuple[object, ...], RerankTable] | None = None
        # (key, reranker): see serving_reranker
        self._reranker: tuple[tuple[object, ...], Reranker] | None = None
        # (modules, their parameters): see _params
        self._modules: tuple[tuple[nn.Module | None, ...], list[torch.Tensor]] | None = None
        # the text table while the encoder is traced (``encoder_trace``: a trace input)
        self.bound_table: torch.Tensor | None = None

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

    def _text_key(self, model: FusedModel) -> tuple[int, ...] | None:
        params = self._params(model)  # the head's too: a retrained head rebuilds it (rare)
        try:
            return (model.text_emb._version, model.has_id._version, *(p._version for p in params))
        except RuntimeError:  # inference tensors carry no version counter
            return None

    def _current_text_part(self, model: FusedModel) -> torch.Tensor | None:
        cached = self._text_part
        if cached is None or cached[0][0] is not model.text_emb or cached[0][1] is not model.has_id:
            return None
        return cached[2] if cached[1] == self._text_key(model) else None

    def text_part_built(self, model: FusedModel) -> torch.Tensor | None:
        """The text table if it is built and current (or being followed), never building it
        (``FusedModel.cold_vectors`` reads its trained rows: the table is built from them)."""
        if self.bound_table is not None:
            return self.bound_table
        return self._current_text_part(model)

    def text_part_table(self, model: FusedModel) -> torch.Tensor | None:
        """The text side (``FusedModel.content``) of every catalog item of ``model``
        (N+1, D) for inference, computed once.

        Serving projects the same catalog rows again and again (a user's history items on
        every cache miss, ~200 candidates per rerank): at 32 users × 50 history items the
        projection was half of ``user_vectors``' time. The table is rebuilt whenever
        ``text_emb`` or ``has_id`` is replaced or edited in place or the towers' weights
        change (tensor version counters), unless the change went through ``following``;
        None in training mode (gradients flow through the projection there) and when
        versions cannot be read (inference tensors).
        """
        if self.bound_table is not None:
            return self.bound_table
        if model.training or model.cfg.fusion != "joint":
            return None
        table = self._current_text_part(model)
        if table is not None:
            return table
        key = self._text_key(model)
        if key is None:
            return None
        # a normal tensor even under inference_mode: ``following`` edits it in place
        with torch.inference_mode(False), torch.no_grad():
            table = model.content(torch.arange(model.n_items + 1, device=model.text_emb.device))
        self._text_part = ((model.text_emb, model.has_id), key, table)
        return table

    def _rerank_key(self, model: FusedModel, text_part: torch.Tensor) -> tuple[object, ...]:
        weight = model.items.id_emb.weight
        return (text_part, weight, weight._version, model.has_id, model.log_pop, model.text_emb)

    def rerank_table(self, model: FusedModel) -> RerankTable | None:
        """The per-item parts of the fusion head's features (``RerankTable``), computed once
        per catalog and weights; None in training, for fusions other than ``joint`` and
        when the text table is unavailable."""
        text_part = self.text_part_table(model)
        if text_part is None:
            return None
        key = self._rerank_key(model, text_part)
        cached = self._rerank
        if cached is not None and _same(cached[0], key):
            return cached[1]
        with torch.inference_mode(False):  # a normal tensor: ``following`` edits it in place
            table = RerankTable.build(model, text_part)
        self._rerank = (key, table)
        return table

    @contextlib.contextmanager
    def following(self, model: FusedModel, replaced: torch.Tensor | None = None) -> Iterator[None]:
        """Around a catalog change (``FusedModel.extend_catalog`` …): items appended or
        truncated, the text of the ``replaced`` indices edited. The tables follow it row by
        row when they were current and the change is local; otherwise they are dropped and
        rebuilt in full at their next use. The traces take them as inputs: none is rebuilt.

        Local: every changed item's text side depends on its own text alone — true unless
        the cold tower reads the trained items' texts (``NeighbourTower``) and an item with
        a trained ID is edited or removed (then every cold item's vector may move)."""
        table = self._current_text_part(model)
        rerank = self._rerank
        if table is None or rerank is None or not _same(rerank[0], self._rerank_key(model, table)):
            rerank = None
        self._text_part = self._rerank = None
        has_id, n_before = model.has_id, model.n_items
        yield
        dev = model.text_emb.device
        rows = torch.empty(0, dtype=torch.long, device=dev) if replaced is None else replaced
        rows = rows.to(dev, torch.long)
        keep = min(n_before, model.n_items) + 1
        if table is None or not _local(model, has_id, rows, keep):
            return
        with torch.inference_mode(False), torch.no_grad():
            table = table[:keep]
            self.bound_table = table  # the trained items' rows, unchanged: the cold tower's bank
            try:
                if model.n_items + 1 > keep:
                    new = torch.arange(keep, model.n_items + 1, device=dev)
                    table = torch.cat([table, model.content(new).to(table.dtype)])
                if len(rows):
                    table[rows] = model.content(rows).to(table.dtype)
            finally:
                self.bound_table = None
            key = self._text_key(model)
            if key is None:
                return
            self._text_part = ((model.text_emb, model.has_id), key, table)
            if rerank is not None:
                rerank[1].follow(model, table, rows, keep)
                self._rerank = (self._rerank_key(model, table), rerank[1])

    def drop_tables(self) -> None:
        """The catalog's vectors changed outside ``following``: rebuild at next use."""
        self._text_part = self._rerank = None

    def serving_reranker(self, model: FusedModel) -> Reranker:
        """``model.rerank`` for the service: features + head + the cold-item rule traced
        into one call (``rerank.trace_reranker``; the GIL is released for the whole head,
        as for the encoder) with the rerank table as inputs, so traced once per head, not
        per catalog; eager without the head, in training or where tracing fails."""
        table = self.rerank_table(model)
        key = (model.use_head, table is not None, model.head)
        cached = self._reranker
        if cached is not None and _same(cached[0], key):
            return cached[1]
        reranker: Reranker = model.rerank
        if table is not None and model.use_head:
            traced = trace_reranker(model, table)
            if traced is not None:
                reranker = ServedReranker(model, traced)
        self._reranker = (key, reranker)
        return reranker

    def serving_encoder(self, model: FusedModel) -> Encoder:
        """``model.user_vectors`` for inference, as one TorchScript call where it can be
        traced (``encoder_trace``): traced once per set of weight modules — the catalog is
        its input — and checked against eager before use; training mode, a failed trace or
        check, or a torch without ``torch.jit`` fall back to eager."""
        if model.training:
            return model.user_vectors
        key = (model.users, model.items, model.items.text_proj, model.items.gate)
        cached = self._encoder
        if cached is not None and _same(cached[0], key):
            return cached[1]
        traced = trace_user_vectors(model)
        encoder = model.user_vectors if traced is None else ServedEncoder(model, traced)
        self._encoder = (key, encoder)
        return encoder


class ServedReranker:
    """The traced rerank, called with the model's rerank table as it is now."""

    def __init__(self, model: FusedModel, traced: TracedRerank) -> None:
        self.model = model
        self.traced = traced

    def __call__(
        self, hist: torch.Tensor, user: torch.Tensor, cand: torch.Tensor, retrieval: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        table = model._inference.rerank_table(model)
        if table is None:
            return model.rerank(hist, user, cand, retrieval)
        return self.traced(hist, user, cand, retrieval, *catalog_inputs(table, model.has_id))


def _local(model: FusedModel, has_id: torch.Tensor, rows: torch.Tensor, keep: int) -> bool:
    """Whether a change of ``rows`` (and of the rows from ``keep`` on, ``has_id`` as it
    was before) leaves every other item's text side as it was (``following``)."""
    cold = model.items.cold
    if cold is None or isinstance(cold, nn.Sequential):  # per item: its own text alone
        return True
    return not bool(has_id[rows].any()) and not bool(has_id[keep:].any())


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Cache keys: tensors, modules and tables by identity, the rest by value."""
    return len(a) == len(b) and all(
        x is y if isinstance(x, torch.Tensor | nn.Module | RerankTable) else x == y
        for x, y in zip(a, b, strict=True)
    )
