"""Metrics against hand-computed rankings, and the full-ranking protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_store.config import ModelConfig
from model_store.model.fused import FusedModel
from model_store.model.scoring import EvalSet, metrics_from_ranks, rank_targets


def test_metrics_from_ranks_by_hand() -> None:
    # ranks 0, 4, 12, 30: hits@10 = 2, hits@20 = 3
    m = metrics_from_ranks(np.array([0, 4, 12, 30]))
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["hr@10"] == m["recall@10"]
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(6)) / 4)
    assert m["ndcg@20"] == pytest.approx(
        (1 / math.log2(2) + 1 / math.log2(6) + 1 / math.log2(14)) / 4
    )
    assert m["mrr@10"] == pytest.approx((1 + 1 / 5) / 4)


def text_model(text: torch.Tensor) -> FusedModel:
    """A zero-shot text model over given item embeddings (row 0 = padding)."""
    cfg = ModelConfig(fusion="text", text_history=1)
    n = text.shape[0]
    return FusedModel(cfg, text, torch.ones(n, dtype=torch.bool), torch.zeros(n))


def test_rank_excludes_history_and_counts_ties_against_target() -> None:
    # items 1..4 on a circle; user's last item is 1 → scores: 1 (history), 2 (0.8), 3, 4
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.8, 0.6], [-1.0, 0.0]])
    model = text_model(emb)
    # target 3 ties with item 2: counted against the target → rank 1
    ranks, top10 = rank_targets(model, EvalSet([[1]], [3]))
    assert ranks.tolist() == [1.0]
    # history item 1 never appears in the top list, even though it scores highest
    assert 1 not in top10[0].tolist()
    # target 4 is last among the 3 non-history items
    ranks, _ = rank_targets(model, EvalSet([[1]], [4]))
    assert ranks.tolist() == [2.0]


def test_target_in_history_still_competes() -> None:
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    model = text_model(emb)
    ranks, _ = rank_targets(model, EvalSet([[1]], [1]))
    assert ranks.tolist() == [0.0]
