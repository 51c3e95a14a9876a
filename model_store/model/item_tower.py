"""The item tower: an item's ID embedding and projected text embedding → its item vector.

An item the model never saw with an ID (new, or added by its text) takes the *cold tower*
instead of its ID: the trained vectors of its nearest items by text (``NeighbourTower``), or
a text MLP (``model_store.training.coldstart`` trains either after the model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model_store.config import ModelConfig


class ItemTower(nn.Module):
    """ID embedding + projected text embedding → item vector (B.., D).

    ``id``: ID only; ``joint``: ID + text projection. In ``joint`` an item without a trained
    ID (new, or never interacted with) takes the **cold tower** instead (``cold_tower``: the
    trained vectors of its nearest items by text, or a text MLP that starts as a copy of the
    text projection), trained after the model with the IDs of random items dropped
    (``model_store.training.coldstart``). ``text``/``late`` use the raw normalised text
    embedding for their LM part.
    """

    def __init__(self, cfg: ModelConfig, n_items: int, text_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.id_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        self.text_proj = text_mlp(text_dim, cfg.dim)
        self.gate = IdGate() if cfg.fusion == "joint" and cfg.id_gate else None
        self.cold: nn.Sequential | NeighbourTower | None = None
        if cfg.fusion == "joint":
            with torch.random.fork_rng(devices=[]):  # the other layers' init is unchanged
                if cfg.cold_tower in ("neighbours", "hybrid"):
                    hybrid = text_dim if cfg.cold_tower == "hybrid" else 0
                    self.cold = NeighbourTower(cfg.dim, cfg.cold_neighbours, text_dim=hybrid)
                else:
                    self.cold = text_mlp(text_dim, cfg.dim)
                    self.cold.load_state_dict(self.text_proj.state_dict())

    def id_part(self, idx: torch.Tensor, has_id: torch.Tensor) -> torch.Tensor:
        mask = has_id[idx].unsqueeze(-1).to(self.id_emb.weight.dtype)
        out: torch.Tensor = self.id_emb(idx) * mask
        return out

    def text_part(self, text: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.text_proj(text)
        return out

    def forward(self, idx: torch.Tensor, text: torch.Tensor, has_id: torch.Tensor) -> torch.Tensor:
        """idx (...,) item indices; text (..., T) their text embeddings → (..., D)."""
        fusion = self.cfg.fusion
        if fusion == "joint":
            return self.id_part(idx, has_id) + self.text_part(text)
        if fusion in ("id", "late"):
            return self.id_part(idx, has_id)
        raise ValueError(f"ItemTower is not used for fusion={fusion!r}")


class IdGate(nn.Module):
    """How far an ID part is trusted, learnt with the model (``model.id_gate``).

    An item's ID part is scaled by ``2σ(a·log(1 + n) + b)`` of its ``n`` training
    interactions, and each history position's ID part also by ``2σ(c·log(1 + m) + d)`` of
    the ``m`` non-padding items up to and including it (the history length as the user
    encoder sees it there; causal, so training and serving agree). All four start at 0: the
    gates start at 1, the model as without them. A rarely bought item or a short history
    whose ID part is noise can learn to lean on its text part.
    """

    def __init__(self) -> None:
        super().__init__()
        self.item_ab = nn.Parameter(torch.zeros(2))
        self.user_ab = nn.Parameter(torch.zeros(2))

    def item(self, log_count: torch.Tensor) -> torch.Tensor:
        """log_count (...,) = log(1 + training interactions) → gate (..., 1) in (0, 2)."""
        a, b = self.item_ab[0], self.item_ab[1]
        return (2.0 * torch.sigmoid(a * log_count + b)).unsqueeze(-1)

    def user(self, hist: torch.Tensor) -> torch.Tensor:
        """hist (B, L) left-padded indices → gate (B, L, 1) in (0, 2) per position."""
        seen = torch.log1p((hist != 0).cumsum(1).to(self.user_ab.dtype))
        c, d = self.user_ab[0], self.user_ab[1]
        return (2.0 * torch.sigmoid(c * seen + d)).unsqueeze(-1)


def text_mlp(text_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(text_dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))


class NeighbourTower(nn.Module):
    """A cold item's vector from the trained items nearest to it by text:
    ``scale · Σ_j softmax_j(cos(t, t_j) / τ) · v_j + bias`` over its ``k`` nearest neighbours.

    A handful of parameters (τ, scale, bias), so it cannot memorise the training items: it
    says "shoppers who chose items with texts like this one chose it like this".
    """

    def __init__(self, dim: int, k: int, *, text_dim: int = 0) -> None:
        super().__init__()
        self.k = k
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.05)))
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(dim))
        # "hybrid": a text MLP added on top (last layer zero: starts as the neighbours alone)
        self.residual: nn.Sequential | None = None
        if text_dim:
            self.residual = text_mlp(text_dim, dim)
            last = self.residual[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(
        self,
        text: torch.Tensor,
        bank_text: torch.Tensor,
        bank_vecs: torch.Tensor,
        self_pos: torch.Tensor | None = None,
        *,
        text_dropout: float = 0.0,
    ) -> torch.Tensor:
        """text (Q, T) of the cold items; bank (W, T) and (W, D) the trained items;
        self_pos (Q,) each query's own row in the bank (−1: none), left out → (Q, D)."""
        k = min(self.k, len(bank_text) - (1 if self_pos is not None else 0))
        out = []
        for s in range(0, len(text), 4096):
            sims = text[s : s + 4096] @ bank_text.T  # (q, W)
            if self_pos is not None:
                own = self_pos[s : s + 4096]
                rows = torch.nonzero(own >= 0).squeeze(-1)
                sims[rows, own[rows]] = -torch.inf
            top, at = sims.topk(max(k, 1), dim=1)
            w = torch.softmax(top / self.log_tau.exp(), dim=1)
            out.append(torch.einsum("qk,qkd->qd", w, bank_vecs[at]))
        vec = self.scale * torch.cat(out) + self.bias
        if self.residual is not None:
            vec = vec + self.residual(F.dropout(text, text_dropout, training=text_dropout > 0))
        return vec


def grown_embedding(emb: nn.Embedding, rows: int) -> nn.Embedding:
    """``emb`` with zero rows appended up to ``rows`` (items without a trained ID)."""
    grown = nn.Embedding(rows, emb.embedding_dim, padding_idx=0)
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: emb.num_embeddings] = emb.weight
    return grown
