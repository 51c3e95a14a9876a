"""The fusion head's training: on held-out validation items, cross-fitted, kept only if it helps.

The retriever has fitted every training position, so its scores there are over-confident,
unlike at serving; the validation items are held-out positions whose scores look like
serving's. The head (``model_store.model.fused.FusionHead``) reranks the top-N retrieved
candidates from cross features; it is trained with a softmax over each validation user's
candidates while the retriever stays frozen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model_store.bundle.manifest import RerankInfo
from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.model.fusion_head import FusionHead
from model_store.model.scoring import EvalSet, metrics_from_ranks, rank_targets, scored_catalog
from model_store.stats import Paired, paired_bootstrap, per_user


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
    is kept only if the paired bootstrap interval of its out-of-fold per-user NDCG@10 gain
    over retrieval alone lies above zero (``keep_head``), and then trained on every
    validation user for the same fixed number of epochs (nothing is chosen on the scored
    users). The reported validation figures with the head are the out-of-fold ones; the
    manifest also records the gain, its interval and the head's serving cost.
    """
    n_cand = min(cfg.model.rerank_candidates, model.n_items)
    if len(valid) < 20:
        reason = "fewer than 20 validation users to train it on"
        return HeadResult(RerankInfo(enabled=False, reason=reason))
    base_ranks, base_top10 = rank_targets(model, valid, use_head=False)
    base = metrics_from_ranks(base_ranks, base_top10, model.n_items)
    examples = head_examples(model, valid, n_cand)
    ranks, top10 = cross_fitted_ranks(model, examples, valid, cfg)
    cross = metrics_from_ranks(ranks, top10, model.n_items)
    cost = serving_cost(model, n_cand)
    enabled, gain = keep_head(per_user(ranks, "ndcg@10"), per_user(base_ranks, "ndcg@10"))
    if enabled:
        train_head(model, examples, np.ones(len(valid), dtype=bool), cfg)
    else:
        model.head = fresh_head(cfg, model.text_emb.device)  # a no-op, as before training
    model.use_head = enabled
    reason = (
        f"cross-fitted validation NDCG@10 gain {gain} is above zero"
        if enabled
        else f"cross-fitted validation NDCG@10 gain {gain} is not above zero; "
        "retrieval order is served"
    )
    info = RerankInfo(
        enabled=enabled,
        reason=reason,
        valid_ndcg10_retrieval=base["ndcg@10"],
        valid_ndcg10_with_head=cross["ndcg@10"],
        examples=int((examples.label >= 0).sum()),
        valid_ndcg10_gain=gain.mean,
        valid_ndcg10_gain_lo=gain.lo,
        valid_ndcg10_gain_hi=gain.hi,
        cost_us_batch1=cost[1],
        cost_us_batch32=cost[32],
    )
    return HeadResult(info, cross)


def keep_head(with_head: np.ndarray, retrieval: np.ndarray, seed: int = 0) -> tuple[bool, Paired]:
    """The keep rule: per-user NDCG@10 with the head (out of fold) against retrieval alone
    on the same users; kept only when the 95 % paired bootstrap interval of the mean gain
    lies above zero (a gain within the noise does not pay for the head's serving cost)."""
    gain = paired_bootstrap(with_head, retrieval, seed=seed)
    return gain.beats, gain


def cross_fitted_ranks(
    model: FusedModel, examples: HeadExamples, valid: EvalSet, cfg: Config
) -> tuple[np.ndarray, np.ndarray]:
    """Each validation user's rank (and top 10) under a head trained on the other half."""
    fold = np.random.default_rng(cfg.train.seed).permutation(len(valid)) % 2
    ranks = np.empty(len(valid))
    top10 = np.zeros((len(valid), 10), dtype=np.int64)
    model.use_head = True
    for k in (0, 1):
        train_head(model, examples, fold != k, cfg)
        held = np.flatnonzero(fold == k)
        sub = EvalSet([valid.histories[i] for i in held], [valid.targets[i] for i in held])
        ranks[held], top10[held] = rank_targets(model, sub, use_head=True)
    return ranks, top10


@torch.inference_mode()
def serving_cost(model: FusedModel, n_cand: int, reps: int = 30) -> dict[int, float]:
    """µs per request of the served rerank (``FusedModel.serving_reranker``: features +
    head) over ``n_cand`` candidates, at batch 1 and 32 (median of ``reps`` calls)."""
    was_training, used = model.training, model.use_head
    model.eval()
    model.use_head = True
    dev = model.text_emb.device
    gen = torch.Generator().manual_seed(0)
    out: dict[int, float] = {}
    try:
        for b in (1, 32):
            hist = torch.randint(1, model.n_items + 1, (b, model.cfg.max_len), generator=gen)
            cand = torch.randint(1, model.n_items + 1, (b, n_cand), generator=gen).to(dev)
            retrieval = torch.randn(b, n_cand, generator=gen).sort(1, descending=True).values
            hist, retrieval = hist.to(dev), retrieval.to(dev)
            user = model.user_vectors(hist)
            rerank = model.serving_reranker()
            times = []
            for _ in range(reps + 3):
                t = time.perf_counter()
                rerank(hist, user, cand, retrieval).cpu()
                times.append(time.perf_counter() - t)
            out[b] = float(np.median(times[3:]) / b * 1e6)
    finally:
        model.train(was_training)
        model.use_head = used
    return out


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
