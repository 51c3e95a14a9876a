"""The user encoder traced with the catalog as inputs (``InferenceCache.serving_encoder``).

Eager PyTorch releases the GIL inside each op and must take it back after each of the
forward's ~100 small ops. In the service the event-loop thread holds the GIL most of the
time, so the encoder thread queued for it op after op and the two threads together never
used more than one core (measured: 1.05 cores at saturation). The traced forward runs its
whole graph in one call without the GIL: +30 % saturated cache-miss throughput
(docs/BENCHMARKS.md).

The catalog's tensors (``text_emb``, ``has_id``, ``log_pop``, the ID table, the projected
text table) are the trace's *inputs*, not its state or constants: the model is traced with
them taken out of its module tree (``_detached``) and put back as plain attributes bound to
the trace's inputs (``_bound``), so a catalog change (an upsert: rows appended or edited)
needs no new trace — re-tracing was 50–80 ms of every one-item upsert (issue 28).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model_store.model.rerank import agrees_on_catalogs

if TYPE_CHECKING:
    from model_store.model.fused import FusedModel

log = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], torch.Tensor]
TracedEncoder = Callable[..., torch.Tensor]  # (hist, *encoder_inputs(model)) → (B, out_dim)
CATALOG_BUFFERS = ("text_emb", "has_id", "log_pop")


def encoder_inputs(model: FusedModel) -> tuple[torch.Tensor, ...] | None:
    """The traced encoder's catalog inputs, current: the model's buffers, its ID table and
    its projected text table; None where the ``joint`` table is unavailable (training)."""
    table = model.text_part_table()
    if table is None:
        if model.cfg.fusion == "joint":
            return None
        table = model.text_emb.new_empty(0)  # fusions without the table: an unused input
    buffers = (model.text_emb, model.has_id, model.log_pop)
    return (*buffers, model.items.id_emb.weight, table)


class ServedEncoder:
    """``model.user_vectors`` for the service: the traced forward, called with the model's
    catalog as it is now (``encoder_inputs``); eager when that is unavailable."""

    def __init__(self, model: FusedModel, traced: TracedEncoder) -> None:
        self.model = model
        self.traced = traced

    def __call__(self, hist: torch.Tensor) -> torch.Tensor:
        inputs = encoder_inputs(self.model)
        if inputs is None:
            return self.model.user_vectors(hist)
        return self.traced(hist, *inputs)


def trace_user_vectors(model: FusedModel) -> TracedEncoder | None:
    """``model.user_vectors`` traced with the catalog as inputs and checked against eager on
    another shape, and on a catalog one row shorter (a trace that had fixed the catalog's
    size would fail it); None when tracing fails or differs (then served eagerly)."""
    n, max_len = model.n_items, model.cfg.max_len
    inputs = encoder_inputs(model)
    if n < 2 or inputs is None or not hasattr(torch, "jit"):
        return None
    dev = model.text_emb.device
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(1, n, (2, min(max_len, 4)), generator=gen).to(dev)
    probe = torch.randint(1, n, (3, min(max_len, 9)), generator=gen).to(dev)
    probe[0, : probe.shape[1] // 2] = 0  # left padding, as in service batches
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace's deprecation and tracer warnings
            trace: Callable[..., TracedEncoder] = torch.jit.trace
            with _detached(model):
                traced = trace(_UserVectors(model), (example, *inputs), check_trace=False)
            want = model.user_vectors(probe)
            same = agrees_on_catalogs(traced, (probe,), inputs, want)
    except Exception as exc:  # any failure means: serve eager
        log.warning("user encoder not traced (%s); serving it eagerly", exc)
        return None
    if not same:
        log.warning("traced user encoder differs from eager; serving it eagerly")
        return None
    return traced


@contextlib.contextmanager
def _detached(model: FusedModel) -> Iterator[None]:
    """The catalog's tensors out of the model's module tree while it is traced: the traced
    module holds the weights only (a module's own tensors would be traced as its state)."""
    buffers = {k: model._buffers[k] for k in CATALOG_BUFFERS}
    emb = model.items._modules["id_emb"]
    try:
        for k in CATALOG_BUFFERS:
            model._buffers[k] = None  # the slot (and the state_dict order) kept
        model.items._modules["id_emb"] = None
        yield
    finally:
        model.items._modules["id_emb"] = emb
        model._buffers.update(buffers)


@contextlib.contextmanager
def _bound(model: FusedModel, inputs: tuple[torch.Tensor, ...]) -> Iterator[None]:
    """Inside the traced forward: the model reads the trace's inputs as its catalog."""
    *buffers, weight, table = inputs
    model.__dict__.update(zip(CATALOG_BUFFERS, buffers, strict=True))
    model.items.__dict__["id_emb"] = _Lookup(weight)
    model._inference.bound_table = table if model.cfg.fusion == "joint" else None
    try:
        yield
    finally:
        model._inference.bound_table = None
        del model.items.__dict__["id_emb"]
        for k in CATALOG_BUFFERS:
            del model.__dict__[k]


class _Lookup:
    """``nn.Embedding`` over a weight that is the trace's input (``ItemTower.id_part``)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight, padding_idx=0)


class _UserVectors(nn.Module):
    """``FusedModel.user_vectors`` as a module's forward, the shape ``torch.jit.trace``
    takes, with the catalog as inputs (``encoder_inputs``)."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist: torch.Tensor, *catalog: torch.Tensor) -> torch.Tensor:
        with _bound(self.model, catalog):
            return self.model.user_vectors(hist)
