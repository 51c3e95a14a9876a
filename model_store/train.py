"""Training: L = L_RS + α·L_LM, early stopping on validation NDCG@10, bundle publishing.

* L_RS — next-item prediction at every position of each history window (causal), full
  softmax over the catalog when it has at most ``full_softmax_max_items`` items, otherwise a
  sampled softmax over in-batch targets plus uniformly sampled negatives with logQ correction.
  The full softmax leaves out every item the user had before the position (not just those
  in the window): evaluation and serving exclude the whole history, so training does too.
* L_LM — in ``frozen`` text mode: symmetric InfoNCE aligning each batch item's ID embedding
  with its projected text embedding, so that the text path alone (new items) lands near
  where a trained ID would be.
* The fusion head is trained afterwards on retrieved hard negatives and kept only when it
  improves validation NDCG@10 (the decision is recorded in the manifest).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from model_store import bundle as bundle_mod
from model_store.config import Config
from model_store.data import Dataset, holdout_last
from model_store.errors import ConfigError, DataError
from model_store.evaluate import (
    EvalSet,
    evaluate,
    metrics_from_ranks,
    rank_targets,
    scored_catalog,
)
from model_store.lora import LoraText
from model_store.model import Batch, FusedModel, FusionHead
from model_store.text_encoder import TextEncoder, pick_device, resolve_precision

log = logging.getLogger(__name__)
HISTORY_KEEP = 200


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- data preparation -----------------------------------------------------------------------


@dataclass
class Prepared:
    """A dataset turned into model indices (item k of ``item_ids`` ↔ index k + 1)."""

    item_ids: list[str]
    users: list[str]
    sequences: list[np.ndarray]  # training sequence of each user, item indices
    weights: list[np.ndarray]
    valid: EvalSet | None
    valid_users: list[str]
    counts: np.ndarray  # (N + 1,) training interactions per item index
    text_emb: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def split_by_user(
    frame: pd.DataFrame, index: dict[str, int] | pd.Index
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Interactions in canonical order → per-user arrays of item indices and weights."""
    if len(frame) == 0:
        return [], [], []
    idx: np.ndarray
    if isinstance(index, pd.Index):
        idx = np.asarray(index.get_indexer(pd.Index(frame["item_id"]))) + 1
    else:
        idx = frame["item_id"].map(index).to_numpy()
    users = frame["user_id"].to_numpy()
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    seqs = np.split(np.asarray(idx, dtype=np.int64), bounds)
    weights = np.split(frame["weight"].to_numpy(dtype=np.float32), bounds)
    return [str(users[s]) for s in starts], seqs, weights


def prepare(dataset: Dataset, *, holdout: bool) -> Prepared:
    items = pd.Index(dataset.items["item_id"])
    inter = dataset.interactions
    if holdout:
        train, valid = holdout_last(inter)
    else:
        train, valid = inter, inter.iloc[0:0]
    users, seqs, weights = split_by_user(train, items)
    counts = np.bincount(
        np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64), minlength=len(items) + 1
    ).astype(np.float32)
    valid_set: EvalSet | None = None
    valid_users: list[str] = []
    if len(valid):
        pos = {u: k for k, u in enumerate(users)}
        v_users = valid["user_id"].tolist()
        v_targets = (items.get_indexer(valid["item_id"]) + 1).tolist()
        hists, targets = [], []
        for u, t in zip(v_users, v_targets, strict=True):
            if u in pos:
                hists.append(seqs[pos[u]].tolist())
                targets.append(int(t))
                valid_users.append(u)
        valid_set = EvalSet(hists, targets)
    return Prepared(
        item_ids=items.tolist(),
        users=users,
        sequences=seqs,
        weights=weights,
        valid=valid_set,
        valid_users=valid_users,
        counts=counts,
    )


def windows(
    seqs: list[np.ndarray],
    weights: list[np.ndarray],
    max_len: int,
    rng: np.random.Generator | None = None,
    future: int = 1,
) -> Batch:
    """Cut each sequence into next-item windows of ``max_len`` covering every target.

    The most recent window always ends at the last item. Without ``rng`` the windows do
    not overlap; with it, each earlier window overlaps the next by a random 0..max_len/2
    items, so from epoch to epoch a target is seen with different amounts of context
    instead of always sitting at the start of a window with almost none.
    """
    inputs, targets, ws, fut, owner, first = [], [], [], [], [], []
    for row, (seq, w) in enumerate(zip(seqs, weights, strict=True)):
        n = len(seq)
        ahead = np.concatenate([seq, np.zeros(future, dtype=np.int64)])
        end = n - 1  # targets are seq[1:]
        while end > 0:
            start = max(0, end - max_len)
            x = np.zeros(max_len, dtype=np.int64)
            y = np.zeros(max_len, dtype=np.int64)
            ww = np.zeros(max_len, dtype=np.float32)
            m = end - start
            x[max_len - m :] = seq[start:end]
            y[max_len - m :] = seq[start + 1 : end + 1]
            ww[max_len - m :] = w[start + 1 : end + 1]
            if future > 1:
                f = np.zeros((max_len, future - 1), dtype=np.int64)
                for j in range(2, future + 1):
                    f[max_len - m :, j - 2] = ahead[start + j : end + j]
                fut.append(f)
            inputs.append(x)
            targets.append(y)
            ws.append(ww)
            owner.append(row)
            first.append(start)
            if start == 0:
                break
            end = start + (int(rng.integers(0, max_len // 2 + 1)) if rng is not None else 0)
    if not inputs:
        raise DataError("no user has two or more training interactions; nothing to learn from")
    return Batch(
        torch.from_numpy(np.stack(inputs)),
        torch.from_numpy(np.stack(targets)),
        torch.from_numpy(np.stack(ws)),
        torch.from_numpy(np.stack(fut)) if fut else None,
        owner=torch.tensor(owner, dtype=torch.int64),
        start=torch.tensor(first, dtype=torch.int64),
    )


def with_earlier(batch: Batch, seqs: list[np.ndarray]) -> Batch:
    """``batch`` with ``earlier``: each window's items before its start, left-aligned and
    0-padded → (B, P), P the longest such prefix in the batch (at least 1)."""
    assert batch.owner is not None and batch.start is not None
    starts = batch.start.tolist()
    out = np.zeros((len(starts), max(1, *starts)), dtype=np.int64)
    for r, (o, st) in enumerate(zip(batch.owner.tolist(), starts, strict=True)):
        out[r, :st] = seqs[o][:st]
    return dataclasses.replace(batch, earlier=torch.from_numpy(out))


# ---- text embeddings (cached across runs) -------------------------------------------------------


def text_embeddings(
    texts: list[str],
    cfg: Config,
    *,
    cache_dir: Path | None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """LM embeddings of the item texts; cached on disk by (model, max_length, texts) hash."""
    precision = resolve_precision(cfg.text.precision, pick_device(device))
    h = hashlib.sha256(f"{cfg.text.model}|{cfg.text.max_length}|{precision}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = cache_dir / "text" / f"{h.hexdigest()[:32]}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.load(path)
    encoder = TextEncoder(
        cfg.text.model, max_length=cfg.text.max_length, device=device, precision=precision
    )
    emb = encoder.encode(texts, batch_size=cfg.text.batch_size, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb


# ---- losses ----------------------------------------------------------------------------------


def rs_loss(
    model: FusedModel, batch: Batch, cfg: Config, sampler_logq: torch.Tensor | None
) -> torch.Tensor:
    """Next-item cross-entropy at every non-padding position.

    With ``train.future_targets`` K > 1 each position also predicts the items 2..K steps
    ahead (a multi-target softmax, the extra targets down-weighted): an order that is
    partly arbitrary (same-second ratings) is then not learnt as if it were exact.
    """
    mask = batch.targets > 0
    y = batch.targets[mask]  # (M,)
    w = batch.weights[mask]
    if sampler_logq is None:
        # every item vector is needed for the softmax: fuse them once, index the windows
        table = model.item_table()  # (N + 1, D)
        h = model.users(table[batch.inputs], batch.inputs == 0)[mask]  # (M, D)
        logits = h @ table[1:].T  # (M, N)
        hist = seen_items(batch, mask, y) if cfg.train.mask_history else None
        if hist is not None:  # in place: the product's backward does not need its output
            logits.index_put_(pairs(hist), logits.new_tensor(MASKED))
        before = earlier_items(batch, mask, y, model.n_items) if cfg.train.mask_history else None
        if before is not None:
            logits.masked_fill_(before[:, 1:], MASKED)
        untrained = ~model.has_id[1:]
        if bool(untrained.any()):
            # an item with no training interaction is never a target: as a permanent
            # negative it would only teach the text tower to bury every new item's text
            logits.masked_fill_(untrained, MASKED)
        # −Σ over targets of weight · log-probability: the cross-entropy against a soft
        # target row, without ever building the (M, N) target matrix
        cols, wts = [y], [w]
        future = batch.future[mask] if batch.future is not None else None
        if future is not None and cfg.train.future_weight > 0:
            for j in range(future.shape[1]):
                f = future[:, j]
                keep = f > 0
                if hist is not None:  # a future item already in the history is not a target
                    keep &= ~(f[:, None] == hist).any(-1)
                if before is not None:
                    keep &= ~before.gather(1, f[:, None]).squeeze(1)
                cols.append(f)
                wts.append(w * keep * (cfg.train.future_weight * cfg.train.future_decay**j))
        targets = torch.stack(cols, 1)  # (M, K)
        weights = torch.stack(wts, 1)
        # (log_softmax's fused backward is ~2x cheaper on the CPU than logsumexp's)
        logp = logits.log_softmax(-1).gather(1, (targets - 1).clamp(min=0))
        return -(weights * logp).sum() / weights.sum()
    # sampled softmax: in-batch targets + uniform negatives, logQ-corrected
    h = model.sequence_states(batch.inputs)[mask]
    neg = torch.randint(1, model.n_items + 1, (cfg.train.num_negatives,), device=h.device)
    cand = torch.unique(torch.cat([y, neg]))  # (C,)
    logits = h @ model.item_table(cand).T - sampler_logq[cand]  # (M, C)
    logits.masked_fill_(~model.has_id[cand], MASKED)  # untrained items: as above
    pos = torch.searchsorted(cand, y)  # column of each target
    return (F.cross_entropy(logits, pos, reduction="none") * w).sum() / w.sum()


# logit of an item left out of the softmax: finite, so a zero target weight times its
# log-probability stays 0 (−inf would give NaN), and far below any real logit
MASKED = -1e9


def seen_items(batch: Batch, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, L) the items already in the window up to each target position, 0 elsewhere.

    Rows are the M target positions (``mask``). Serving and evaluation exclude the user's
    history, so the softmax is taken over the items the user has not interacted with yet;
    the target itself always stays. At most L items per row rather than an (M, N) mask: the
    catalog can be much wider than a window. The items before the window: ``earlier_items``.
    """
    b, l = batch.inputs.shape
    pos = torch.arange(l, device=y.device)
    rows_b = torch.arange(b, device=y.device)[:, None].expand(b, l)[mask]  # (M,)
    cols_t = pos.expand(b, l)[mask]  # (M,)
    hist = batch.inputs[rows_b]  # (M, L)
    keep = (pos[None, :] <= cols_t[:, None]) & (hist != y[:, None])
    return hist * keep


def earlier_items(
    batch: Batch, mask: torch.Tensor, y: torch.Tensor, n_items: int
) -> torch.Tensor | None:
    """(M, N + 1) bool, True where the item (column = item index) came before the target
    position's window (``batch.earlier``); the target itself and column 0 stay False.

    Evaluation and serving exclude the user's whole history, while a window holds only its
    last L items. One row per window is built and repeated for its positions: a dense mask,
    as a user's earlier items can be many more than L.
    """
    if batch.earlier is None:
        return None
    b, l = batch.inputs.shape
    per_window = torch.zeros(b, n_items + 1, dtype=torch.bool, device=y.device)
    per_window.scatter_(1, batch.earlier, True)
    per_window[:, 0] = False  # padding
    rows_b = torch.arange(b, device=y.device)[:, None].expand(b, l)[mask]  # (M,)
    before = per_window[rows_b]
    before[torch.arange(len(y), device=y.device), y] = False  # the target always stays
    return before


def pairs(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every seen item of ``seen_items`` (columns are item index − 1)."""
    keep = hist > 0
    rows = torch.arange(len(hist), device=hist.device)[:, None].expand_as(hist)[keep]
    return rows, hist[keep] - 1


def align_loss(model: FusedModel, batch: Batch, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between ID embeddings and projected text of the batch's items."""
    idx = torch.unique(batch.targets[batch.targets > 0])
    idx = idx[model.has_id[idx]]
    if len(idx) > 4096:
        idx = idx[torch.randperm(len(idx), device=idx.device)[:4096]]
    z_id = F.normalize(model.items.id_emb(idx), dim=-1)
    z_text = F.normalize(model.items.text_part(model.text_emb[idx]), dim=-1)
    logits = z_id @ z_text.T / temperature
    labels = torch.arange(len(idx), device=idx.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def swap_in(
    params: list[torch.nn.Parameter], values: list[torch.Tensor] | None
) -> list[torch.Tensor] | None:
    """Load ``values`` into ``params`` (no-op for None); returns the values they held."""
    if values is None:
        return None
    held = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    return held


# ---- the training loop ----------------------------------------------------------------------


@dataclass
class TrainResult:
    model: FusedModel
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    valid_metrics: dict[str, float]
    seconds: float
    seconds_to_best: float
    rerank: dict[str, Any]
    batch_size: int = 0


AUTO_MIN_STEPS = 128


def batch_size_for(requested: int, n_windows: int, *, lm_in_loop: bool = False) -> int:
    """``train.batch_size``, or for 0 (auto) the largest power of two in [16, 128] that
    leaves at least ``AUTO_MIN_STEPS`` optimizer steps per epoch; 128 when every step runs
    the language model (``lora`` mode), whose forward pass then dominates a step."""
    if requested > 0:
        return requested
    if lm_in_loop:
        return 128
    size = 16
    while size < 128 and n_windows // (2 * size) >= AUTO_MIN_STEPS:
        size *= 2
    return size


def fused_adam(device: torch.device) -> bool:
    """AdamW's fused kernel (one call for every parameter) where torch has one: with it and
    the one-call weight average a MovieLens epoch on 2 CPU cores took 23 % less time
    (``bench/train_step.py``, docs/BENCHMARKS.md)."""
    return device.type in ("cpu", "cuda")


def build_model(cfg: Config, prep: Prepared, device: torch.device) -> FusedModel:
    text = torch.from_numpy(
        np.concatenate([np.zeros((1, prep.text_emb.shape[1]), np.float32), prep.text_emb])
    )
    has_id = torch.from_numpy(prep.counts > 0)
    log_pop = torch.from_numpy(np.log1p(prep.counts))
    return FusedModel(cfg.model, text, has_id, log_pop).to(device)


def fit(
    cfg: Config,
    prep: Prepared,
    *,
    epochs: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    lora: LoraText | None = None,
) -> TrainResult:
    """Train the retriever (and the fusion head); returns the best-epoch model."""
    tr = cfg.train
    seed_everything(tr.seed)
    device = pick_device(tr.device)
    model = build_model(cfg, prep, device)
    n_epochs = tr.epochs if epochs is None else epochs
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    valid = prep.valid if (prep.valid is not None and len(prep.valid)) else None
    if valid is not None and tr.max_eval_users and len(valid) > tr.max_eval_users:
        rng = np.random.default_rng(tr.seed)
        keep = np.sort(rng.choice(len(valid), tr.max_eval_users, replace=False))
        valid = EvalSet([valid.histories[i] for i in keep], [valid.targets[i] for i in keep])

    if cfg.model.fusion == "text":  # zero-shot: nothing to train
        metrics = evaluate(model, valid)["all"] if valid is not None else {}
        return TrainResult(
            model,
            0,
            0,
            [],
            metrics,
            time.perf_counter() - t0,
            0.0,
            {"enabled": False, "reason": "text fusion is zero-shot"},
        )

    sampler_logq = None
    # the multi-target loss is a full-softmax one; a sampled softmax predicts the next item
    future = tr.future_targets if prep.n_items <= tr.full_softmax_max_items else 1
    data = windows(prep.sequences, prep.weights, cfg.model.max_len, future=future)
    batch_size = batch_size_for(tr.batch_size, len(data.inputs), lm_in_loop=lora is not None)
    if prep.n_items > tr.full_softmax_max_items:
        # each candidate appears in the batch with probability ≈ in-batch share + K/N
        freq = torch.from_numpy(prep.counts / max(prep.counts.sum(), 1.0))
        tokens = float((data.targets > 0).sum()) / len(data.targets) * batch_size
        q = (1 - (1 - freq) ** tokens) + tr.num_negatives / prep.n_items
        sampler_logq = torch.log(q.clamp(min=1e-12, max=1.0)).float().to(device)
    params = list(model.parameters())
    if lora is not None:
        lora.to(device)
        lora.train()
        lora_params = [p for p in lora.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            [{"params": params, "lr": tr.lr}, {"params": lora_params, "lr": tr.lr / 4}],
            weight_decay=tr.weight_decay,
            fused=fused_adam(device),
        )
    else:
        opt = torch.optim.AdamW(
            params, lr=tr.lr, weight_decay=tr.weight_decay, fused=fused_adam(device)
        )
    use_align = cfg.model.fusion == "joint" and tr.alpha > 0 and lora is None
    # exponential moving average of the weights, validated and kept instead of the raw ones
    ema = [p.detach().clone() for p in params] if tr.ema_decay > 0 else None
    weights: list[torch.Tensor] = list(params)  # (as foreach ops type them)
    ema_steps = 0

    def snapshot() -> dict[str, Any]:
        snap = {"model": copy.deepcopy(model.state_dict())}
        if lora is not None:
            snap["lora"] = {k: v.detach().clone() for k, v in lora.state_dict().items()}
        return snap

    best: tuple[float, int, dict[str, Any], dict[str, float], float] = (
        -1.0,
        0,
        snapshot(),
        {},
        0.0,
    )
    bad = 0
    # epochs whose smoothed score awaits later epochs' figures: (epoch, snapshot, row)
    half = tr.select_window // 2 if valid is not None else 0
    recent: collections.deque[tuple[int, dict[str, Any], dict[str, float]]] = collections.deque()
    scores: list[float] = []

    def consider(epoch: int, snap: dict[str, Any], row: dict[str, float]) -> bool:
        nonlocal best
        near = scores[max(0, epoch - 1 - half) : epoch + half]
        smoothed = sum(near) / len(near)
        if smoothed > best[0]:
            best = (smoothed, epoch, snap, row, row["seconds"])
            return True
        return False

    gen = torch.Generator().manual_seed(tr.seed)
    jitter = np.random.default_rng(tr.seed)
    for epoch in range(1, n_epochs + 1):
        model.train()
        if tr.window_jitter and epoch > 1:
            data = windows(prep.sequences, prep.weights, cfg.model.max_len, jitter, future=future)
        perm = torch.randperm(len(data.inputs), generator=gen)
        sums = {"loss_rs": 0.0, "loss_lm": 0.0}
        steps = 0
        for s in range(0, len(perm), batch_size):
            sel = perm[s : s + batch_size]
            batch = data.take(sel)
            if tr.mask_history and tr.mask_earlier and sampler_logq is None:
                batch = with_earlier(batch, prep.sequences)
            batch = batch.to(device)
            l_lm_lora = None
            if lora is not None:
                # re-encode this batch's target items with gradients; others use the cache
                idx = torch.unique(batch.targets[batch.targets > 0])
                idx = idx[torch.randperm(len(idx), device=idx.device)[: cfg.text.batch_size]]
                fresh = lora.embed(idx)
                model.text_emb = model.text_emb.detach().index_put((idx,), fresh)
                l_lm_lora = lora.mlm_loss(idx[:32])
            l_rs = rs_loss(model, batch, cfg, sampler_logq)
            loss = l_rs
            if l_lm_lora is not None:
                loss = loss + tr.alpha * l_lm_lora
                sums["loss_lm"] += float(l_lm_lora.detach())
            if use_align:
                l_lm = align_loss(model, batch, tr.align_temperature)
                loss = loss + tr.alpha * l_lm
                sums["loss_lm"] += float(l_lm.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if ema is not None:
                # warm-up: early averages do not drag the random initial weights along
                decay = min(tr.ema_decay, (1 + ema_steps) / (10 + ema_steps))
                ema_steps += 1
                with torch.no_grad():
                    torch._foreach_lerp_(ema, weights, 1.0 - decay)
            if lora is not None:
                model.text_emb = model.text_emb.detach()
            sums["loss_rs"] += float(l_rs.detach())
            steps += 1
        row: dict[str, float] = {
            "epoch": float(epoch),
            **{k: v / max(steps, 1) for k, v in sums.items()},
        }
        live = swap_in(params, ema)  # validate and keep the averaged weights
        if valid is not None:
            ranks, top10 = rank_targets(model, valid, use_head=False)
            m = metrics_from_ranks(ranks, top10, prep.n_items)
            row.update({f"valid_{k}": v for k, v in m.items() if k != "users"})
            score = m["ndcg@10"]
        else:
            score = float(epoch)  # no holdout: the last epoch is the one kept
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        scores.append(score)
        recent.append((epoch, snapshot(), row))
        swap_in(params, live)
        # the candidate is the epoch `half` back, judged by its validation NDCG@10 averaged
        # with its neighbours' (one epoch's figure over ~1,000 users is noisy)
        if len(recent) > half:
            if consider(*recent.popleft()):
                bad = 0
            else:
                bad += 1
                if valid is not None and bad >= tr.patience:
                    break
    while recent:  # the last epochs, judged by the neighbours they have
        consider(*recent.popleft())
    model.load_state_dict(best[2]["model"])
    if lora is not None:
        lora.load_state_dict(best[2]["lora"])
        text = torch.from_numpy(lora.encode_all(cfg.text.batch_size)).to(device)
        model.text_emb = torch.cat([torch.zeros_like(text[:1]), text])
    model.eval()
    valid_metrics = {
        k.removeprefix("valid_"): v for k, v in best[3].items() if k.startswith("valid_")
    }
    rerank: dict[str, Any] = {"enabled": False, "reason": "disabled in config"}
    if tr.rerank and valid is not None:
        rerank = fit_head(model, cfg, prep, valid)
        if rerank["enabled"]:
            valid_metrics = dict(rerank["valid_with_head"])
    elif tr.rerank:
        rerank = {"enabled": False, "reason": "no validation holdout to prove the head helps"}
    return TrainResult(
        model,
        best[1],
        len(history),
        history,
        valid_metrics,
        time.perf_counter() - t0,
        best[4],
        rerank,
        batch_size,
    )


def fit_head(model: FusedModel, cfg: Config, prep: Prepared, valid: EvalSet) -> dict[str, Any]:
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
    n_cand = min(cfg.model.rerank_candidates, prep.n_items)
    if len(valid) < 20:
        return {"enabled": False, "reason": "fewer than 20 validation users to train it on"}
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
    return {
        "enabled": enabled,
        "valid_ndcg@10_retrieval": base["ndcg@10"],
        "valid_ndcg@10_with_head": cross["ndcg@10"],
        "valid_with_head": cross,
        "examples": int((examples.label >= 0).sum()),
        "reason": "improves cross-fitted validation NDCG@10"
        if enabled
        else "does not improve cross-fitted validation NDCG@10; retrieval order is served",
    }


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
            loss.backward()
            opt.step()
    model.head.eval()


def fresh_head(cfg: Config, device: torch.device) -> FusionHead:
    """An untrained (no-op) head, seeded by ``train.seed`` without touching the global
    random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return FusionHead(cfg.model.rerank_hidden).to(device)


# ---- train + publish ----------------------------------------------------------------------------


def train_and_publish(
    dataset: Dataset,
    cfg: Config,
    store: Path,
    *,
    cache_dir: Path | None = None,
    epochs: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    text_progress: Callable[[int], None] | None = None,
) -> tuple[Path, TrainResult]:
    """Train on ``dataset`` with ``cfg`` and publish a new bundle version in ``store``."""
    cfg.validate()
    if cfg.text.mode == "lora" and cfg.model.fusion != "joint":
        raise ConfigError("text.mode=lora tunes the LM jointly and needs fusion=joint")
    texts = dataset.item_texts()
    # the LM arithmetic the catalog's text embeddings were made with (manifest: text_model);
    # new items are later encoded the same way. LoRA's tuned embeddings are made in fp32.
    precision_used = (
        "fp32"
        if cfg.text.mode == "lora"
        else resolve_precision(cfg.text.precision, pick_device(cfg.train.device))
    )
    text = text_embeddings(
        texts, cfg, cache_dir=cache_dir, device=cfg.train.device, progress=text_progress
    )
    lora = None
    if cfg.text.mode == "lora":
        lora = LoraText(cfg.text, texts, pick_device(cfg.train.device))
    prep = prepare(dataset, holdout=cfg.train.holdout)
    prep.text_emb = text
    result = fit(cfg, prep, epochs=epochs, on_epoch=on_epoch, lora=lora)
    text = result.model.text_emb[1:].cpu().numpy()
    model = result.model.cpu()
    histories = {
        u: [prep.item_ids[i - 1] for i in s[-HISTORY_KEEP:]]
        for u, s in zip(prep.users, prep.sequences, strict=True)
    }
    version = bundle_mod.new_version_name()
    manifest = bundle_mod.base_manifest(version, cfg)
    manifest.update(
        {
            "data": {
                "fingerprint": dataset.fingerprint(),
                "source": str(dataset.source),
                "n_users": len(prep.users),
                "n_items": prep.n_items,
                "n_interactions": len(dataset.interactions),
                "text_columns": list(dataset.text_columns),
                "holdout": cfg.train.holdout,
            },
            "dims": {"text": int(text.shape[1]), "model": cfg.model.dim, "vector": model.out_dim},
            "item_vocab_hash": bundle_mod.vocab_hash(prep.item_ids),
            "text_model": {
                "name": cfg.text.model,
                "mode": cfg.text.mode,
                "max_length": cfg.text.max_length,
                "precision": precision_used,
            },
            "metrics": {
                "valid": result.valid_metrics,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "batch_size": result.batch_size,
                "train_seconds": result.seconds,
                "seconds_to_best": result.seconds_to_best,
                "seconds_per_epoch": (
                    result.seconds / result.epochs_run if result.epochs_run else 0.0
                ),
                "history": result.history,
            },
            "rerank": {k: v for k, v in result.rerank.items() if k != "valid_with_head"},
        }
    )
    items = dataset.items.copy()
    with bundle_mod.staging(store, version) as staged:
        bundle_mod.write_bundle_files(staged, model, items, histories)
        if lora is not None:
            lora.save(staged)
        path = bundle_mod.publish(store, staged, manifest)
    log.info("published %s", path)
    return path, result


def nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
