"""The fusion head at inference (model_store.model.rerank): the per-item table and the
traced reranker give the training-time path's numbers and follow the catalog and head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_store.config import ModelConfig
from model_store.model.fused import FusedModel, left_pad
from model_store.model.fusion_head import FusionHead
from model_store.model.serving import ServedReranker


def model_with_head(n: int = 40) -> FusedModel:
    """A joint model with a few text-only items and a head with random (non-zero) weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="joint", dim=16, max_len=8, n_layers=1, n_heads=2, text_history=3)
    text = F.normalize(torch.randn(n + 1, 12), dim=-1)
    text[0] = 0
    has_id = torch.ones(n + 1, dtype=torch.bool)
    has_id[-5:] = False
    model = FusedModel(cfg, text, has_id, torch.rand(n + 1)).eval()
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.use_head = True
    return model


def inputs(model: FusedModel, b: int, n_cand: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(b * 100 + n_cand)
    hists = [
        torch.randint(1, model.n_items + 1, (1 + i % 6,), generator=gen).tolist() for i in range(b)
    ]
    hist = left_pad(hists, 6)
    cand = torch.stack(
        [torch.randperm(model.n_items, generator=gen)[:n_cand] + 1 for _ in range(b)]
    )
    retrieval = torch.randn(b, n_cand, generator=gen).sort(dim=1, descending=True).values
    with torch.no_grad():
        user = model.user_vectors(hist)
    return hist, user, cand, retrieval


def training_path(model: FusedModel, *args: torch.Tensor) -> torch.Tensor:
    """``rerank`` as in training mode: features recomputed from the towers, no table."""
    model.train()
    try:
        with torch.no_grad():
            return model.rerank(*args)
    finally:
        model.eval()


def test_table_features_and_traced_rerank_equal_the_training_path() -> None:
    model = model_with_head()
    for b, n_cand in ((1, 30), (4, 12), (33, 40)):
        args = inputs(model, b, n_cand)
        with torch.inference_mode():
            assert model._inference.rerank_table(model) is not None
            table = model.rerank_features(*args)
            served = model.serving_reranker()(*args)
        model.train()
        with torch.no_grad():
            generic = model.rerank_features(*args)
        model.eval()
        torch.testing.assert_close(table, generic, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(served, training_path(model, *args), rtol=1e-5, atol=1e-5)
        cold = ~model.has_id[args[2]]
        assert cold.any()  # the cold-item rule is exercised


def test_serving_reranker_is_traced_cached_and_follows_head_and_catalog() -> None:
    model = model_with_head()
    args = inputs(model, 3, 20)
    with torch.no_grad():
        first = model.serving_reranker()
        assert isinstance(first, ServedReranker)  # traced, not eager
        assert model.serving_reranker() is first
        model.head = FusionHead(model.cfg.rerank_hidden)  # a retrained head
        for p in model.head.parameters():
            torch.nn.init.normal_(p, std=0.5)
        second = model.serving_reranker()
        assert second is not first
        torch.testing.assert_close(second(*args), training_path(model, *args))
        model.extend_catalog(F.normalize(torch.randn(2, 12), dim=-1))
        third = model.serving_reranker()
        assert third is second  # the catalog is the trace's input: no re-trace (issue 28)
        grown = inputs(model, 3, 20)
        assert (grown[2] > 40).any()  # the new items are candidates
        torch.testing.assert_close(third(*grown), training_path(model, *grown))
        model.use_head = False
        assert torch.equal(model.serving_reranker()(*args), args[3])  # retrieval order
