"""Full-ranking evaluation: every catalog item is scored, the user's history is excluded.

With one held-out target per user, Recall@K equals HR@K. Ties are counted against the
target (an item scoring exactly as the target ranks above it), so ties never flatter a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model_store.model.fused import FusedModel, left_pad

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "hr@10", "coverage@10")


@dataclass
class EvalSet:
    """Users to evaluate: history item indices (oldest first) and one target index each."""

    histories: list[list[int]]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)


def metrics_from_ranks(
    ranks: np.ndarray, top10: np.ndarray | None = None, n_items: int = 0
) -> dict[str, float]:
    """ranks: 0-based rank of each user's target (inf when unranked) → metric means."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if len(ranks) == 0:
        return {m: float("nan") for m in METRICS} | {"users": 0.0}
    for k in (10, 20):
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        gains = np.zeros_like(ranks)
        gains[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
        out[f"ndcg@{k}"] = float(gains.mean())
    hit10 = ranks < 10
    rr = np.zeros_like(ranks)
    rr[hit10] = 1.0 / (ranks[hit10] + 1.0)
    out["mrr@10"] = float(rr.mean())
    out["hr@10"] = float(hit10.mean())
    if top10 is not None and n_items:
        out["coverage@10"] = float(len(np.unique(top10[top10 > 0])) / n_items)
    out["users"] = float(len(ranks))
    return out


def scored_catalog(
    model: FusedModel, vectors: torch.Tensor, hists: list[list[int]], targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieval scores of every item for each user, as evaluation ranks them: history items
    at −inf, except the target, which competes even if it was in the history
    (re-consumption). vectors (N, D) = ``item_vectors()``; targets (B,) item indices.
    → (left-padded history (B, L), user vectors (B, D), scores (B, N), column j ↔ index j+1).
    """
    device = vectors.device
    hist = left_pad(hists, model.cfg.max_len).to(device)
    user = model.user_vectors(hist)  # (B, D)
    scores = user @ vectors.T
    rows = torch.cat([torch.full((len(h),), r, dtype=torch.long) for r, h in enumerate(hists)])
    cols = torch.cat([torch.as_tensor(h, dtype=torch.long) for h in hists]) - 1
    scores[rows.to(device), cols.to(device)] = -torch.inf
    t_idx = targets - 1
    scores.scatter_(1, t_idx[:, None], (user * vectors[t_idx]).sum(-1, keepdim=True))
    return hist, user, scores


@torch.inference_mode()
def rank_targets(
    model: FusedModel,
    data: EvalSet,
    *,
    batch_size: int = 256,
    use_head: bool | None = None,
    top_k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target among all items minus the history, and each top ``top_k``
    (item indices, 0 where fewer items were ranked)."""
    device = model.text_emb.device
    was_training = model.training
    model.eval()
    vectors = model.item_vectors()  # (N, D) for indices 1..N
    n_items = vectors.shape[0]
    head = model.use_head if use_head is None else use_head
    ranks = np.empty(len(data), dtype=np.float64)
    top10 = np.zeros((len(data), top_k), dtype=np.int64)
    for start in range(0, len(data), batch_size):
        hists = data.histories[start : start + batch_size]
        targets = torch.as_tensor(data.targets[start : start + batch_size], device=device)
        hist, user, scores = scored_catalog(model, vectors, hists, targets)
        t_idx = targets - 1
        target_score = scores.gather(1, t_idx[:, None]).squeeze(1)
        if head:
            # rank within the reranked candidates; a target outside them ranks below all
            n_cand = min(model.cfg.rerank_candidates, n_items)
            retrieval, cand = scores.topk(n_cand, dim=1)
            fused = model.rerank(hist, user, cand + 1, retrieval.clamp(min=-1e9))
            fused = fused.masked_fill(retrieval == -torch.inf, -torch.inf)
            is_t = cand == t_idx[:, None]
            t_fused = torch.where(is_t, fused, torch.zeros_like(fused)).sum(1)
            greater = (fused > t_fused[:, None]).sum(1) + (fused == t_fused[:, None]).sum(1) - 1
            rank = torch.where(
                is_t.any(1), greater.double(), torch.full_like(greater, n_cand, dtype=torch.double)
            )
            ranks[start : start + len(hists)] = rank.cpu().numpy()
            order = fused.topk(min(top_k, n_cand), dim=1).indices
            top10[start : start + len(hists), : order.shape[1]] = (
                (cand.gather(1, order) + 1).cpu().numpy()
            )
            continue
        greater = (scores > target_score[:, None]).sum(1)
        ties = (scores == target_score[:, None]).sum(1) - 1
        ranks[start : start + len(hists)] = (greater + ties).cpu().numpy()
        kk = min(top_k, n_items)
        top_v, top_i = scores.topk(kk, dim=1)
        top_i = torch.where(top_v > -torch.inf, top_i + 1, torch.zeros_like(top_i))
        top10[start : start + len(hists), :kk] = top_i.cpu().numpy()
    model.train(was_training)
    return ranks, top10


def evaluate(
    model: FusedModel,
    data: EvalSet,
    *,
    warm_items: Sequence[bool] | None = None,
    use_head: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics for all users, and split by warm/cold target (cold = unseen in training)."""
    ranks, top10 = rank_targets(model, data, use_head=use_head)
    result = {"all": metrics_from_ranks(ranks, top10, model.n_items)}
    if warm_items is not None:
        warm = np.array([bool(warm_items[t]) for t in data.targets], dtype=bool)
        result["warm"] = metrics_from_ranks(ranks[warm], top10[warm], model.n_items)
        result["cold"] = metrics_from_ranks(ranks[~warm], top10[~warm], model.n_items)
    return result
