"""The fusion head: the reranker over retrieved candidates (its cross features are built by
``FusedModel.rerank_features``; ``model_store.training.head`` fits it)."""

from __future__ import annotations

import torch
from torch import nn


class FusionHead(nn.Module):
    """Reranker over retrieved candidates: residual MLP on cross features.

    Features per (user, candidate): retrieval score, the user's dot products with the
    candidate's ID part and text part, max and mean text cosine between the candidate and the
    last few history items, log popularity and log(1 + retrieval rank). The output is added
    to the retrieval score; the last layer starts at zero so an untrained head is a no-op.
    """

    N_FEATURES = 7

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(self.N_FEATURES)
        self.mlp = nn.Sequential(
            nn.Linear(self.N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, N, F) → rerank score (B, N)."""
        out: torch.Tensor = features[..., 0] + self.mlp(self.norm(features)).squeeze(-1)
        return out
