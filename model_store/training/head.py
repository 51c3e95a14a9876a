"""The fusion head's training: on held-out validation items, cross-fitted, kept only if it helps.

The retriever has fitted every training position, so its scores there are over-confident,
unlike at serving; the validation items are held-out positions whose scores look like
serving's. The head (``model_store.model.fused.FusionHead``) reranks the top-N retrieved
candidates from cross features; it is trained with a softmax over each validation user's
candidates while the retriever stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model_store.bundle.manifest import RerankInfo
from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.model.fusion_head import FusionHead
from model_store.model.scoring import EvalSet, metrics_from_ranks, rank_targets, scored_catalog


@dataclass
class HeadResult:
    """What the manifest records, and the out-of-fold validation metrics with the head."""

    info: RerankInfo
    valid_with_head: dict[str, float] | None = None


def fit_head(model: FusedModel, cfg: Config, valid: EvalSet) -> HeadResult:
    """Train the fusion head on the validation items: held-out next items, cross-fitted.

    The retriever has fitted every training position, so its scores there are
    over-confident, unlike at serving; the validation items are held-out positions whose
    scores look like serving's. The retriever is frozen; each validation user whose item
    is among the top-N retrieved candidates is one example (softmax over its candidates).
    First the head is cross-fitted: trained on one half of the validation users and
    scored on the other, both ways, so no user is scored by a head that learnt from it. It
    is kept only if this out-of-fold NDCG@10 beats retrieval alone, and then trained on
    every validation user for the same fixed number of epochs (nothing is chosen on the
    scored users). The reported validation figures with the head are the out-of-fold ones.
    """
    tr = cfg.train
    n_cand = min(cfg.model.rerank_candidates, model.n_items)
    if len(valid) < 20:
        reason = "fewer than 20 validation users to train it on"
        return HeadResult(RerankInfo(enabled=False, reason=reason))
    base = metrics_from_ranks(*rank_targets(model, valid, use_head=False), model.n_items)
    examples = head_examples(model, valid, n_cand)
    fold = np.random.default_rng(tr.seed).permutation(len(valid)) % 2
    ranks = np.empty(len(valid))
    top10 = np.zeros((len(valid), 10), dtype=np.int64)
    model.use_head = True
    for k in (0, 1):
        train_head(model, examples, fold != k, cfg)
        held = np.flatnonzero(fold == k)
        sub = EvalSet([valid.histories[i] for i in held], [valid.targets[i] for i in held])
        ranks[held], top10[held] = rank_targets(model, sub, use_head=True)
    cross = metrics_from_ranks(ranks, top10, model.n_items)
    enabled = cross["ndcg@10"] > base["ndcg@10"]
    if enabled:
        train_head(model, examples, np.ones(len(valid), dtype=bool), cfg)
    else:
        model.head = fresh_head(cfg, model.text_emb.device)  # a no-op, as before training
    model.use_head = enabled
    reason = (
        "improves cross-fitted validation NDCG@10"
        if enabled
        else "does not improve cross-fitted validation NDCG@10; retrieval order is served"
    )
    info = RerankInfo(
        enabled=enabled,
        reason=reason,
        valid_ndcg10_retrieval=base["ndcg@10"],
        valid_ndcg10_with_head=cross["ndcg@10"],
        examples=int((examples.label >= 0).sum()),
    )
    return HeadResult(info, cross)


@dataclass
class HeadExamples:
    """The frozen retriever's view of each validation user (U users, N candidates)."""

    hist: torch.Tensor  # (U, L) left-padded history
    user: torch.Tensor  # (U, D) user vectors
    cand: torch.Tensor  # (U, N) candidate item indices, by retrieval score
    retrieval: torch.Tensor  # (U, N) their retrieval scores
    label: np.ndarray  # (U,) the target's column in cand, -1 when it was not retrieved


@torch.no_grad()
def head_examples(
    model: FusedModel, data: EvalSet, n_cand: int, batch_size: int = 512
) -> HeadExamples:
    """Candidates as evaluation ranks them (``scored_catalog``)."""
    device = model.text_emb.device
    model.eval()
    vectors = model.item_vectors()
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, len(data), batch_size):
        y = torch.as_tensor(data.targets[s : s + batch_size], device=device)
        hist, user, scores = scored_catalog(model, vectors, data.histories[s : s + batch_size], y)
        retrieval, cand = scores.topk(n_cand, dim=1)
        cand = cand + 1
        hit = cand == y[:, None]
        label = torch.where(hit.any(1), hit.int().argmax(1), -1)
        parts.append((hist, user, cand, retrieval.clamp(min=-1e9), label))
    hist, user, cand, retrieval, label = (torch.cat(t) for t in zip(*parts, strict=True))
    return HeadExamples(hist, user, cand, retrieval, label.cpu().numpy())


def train_head(model: FusedModel, ex: HeadExamples, users: np.ndarray, cfg: Config) -> None:
    """A fresh head trained on the examples of ``users`` (bool mask) for
    ``train.rerank_epochs`` epochs; the retriever stays frozen."""
    tr = cfg.train
    device = model.text_emb.device
    gen = torch.Generator().manual_seed(tr.seed)
    model.head = fresh_head(cfg, device)
    rows = np.flatnonzero(users & (ex.label >= 0))
    if len(rows) == 0:
        return
    with torch.no_grad():  # the features of a frozen retriever, computed once
        features = torch.cat(
            [
                model.rerank_features(ex.hist[r], ex.user[r], ex.cand[r], ex.retrieval[r])
                for r in np.array_split(rows, max(1, len(rows) // 512))
            ]
        )
    label = torch.as_tensor(ex.label[rows], device=device)
    opt = torch.optim.AdamW(model.head.parameters(), lr=tr.rerank_lr)
    model.head.train()
    bs = 64
    for _ in range(tr.rerank_epochs):
        order = torch.randperm(len(rows), generator=gen).to(device)
        for s in range(0, len(rows), bs):
            sel = order[s : s + bs]
            loss = F.cross_entropy(model.head(features[sel]), label[sel])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
    model.head.eval()


def fresh_head(cfg: Config, device: torch.device) -> FusionHead:
    """An untrained (no-op) head, seeded by ``train.seed`` without touching the global
    random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return FusionHead(cfg.model.rerank_hidden).to(device)
