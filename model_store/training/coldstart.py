"""The cold tower: where an item unseen in training lands, and how much it is shown.

A new item (added by its text, ``POST /v1/items``) has no trained ID embedding, and the
text projection of the joint model is only the text *part* of an item vector whose ID part
carries most of the score, so new items never reached a top 20 (issue 17). Two steps after
the model is trained, with everything else frozen:

1. **Where it lands** — the cold tower (``ItemTower.cold``; by default the
   ``NeighbourTower``: the softmax-weighted mean of the trained vectors of the item's nearest
   items by text, with a learnt temperature, scale and bias) is trained on the model's own
   training windows with IDs dropped: in every step a random ``cold_rate`` of the items lose
   their ID — their trained vector is replaced by the tower's, in the softmax and in the
   user's history alike — and the next-item loss is taken over the whole catalog with the
   usual history masking (DropoutNet, Volkovs et al. 2017, applied to a frozen model). An
   item is never its own neighbour there, as a new item never is.
2. **How much it is shown** — ``calibrate_offset`` sets ``model.cold_offset``, a score added
   to every item without a trained ID, so that trained items seen through the tower take
   ``cold_exposure`` times the top-20 slots they take with their own vectors, on the
   validation users: new items are neither buried nor flooding the lists.

Items with a trained ID keep exactly their trained vectors, so warm recommendations are
unchanged (the offset lifts only items without an ID).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from model_store.bundle.manifest import ColdInfo
from model_store.config import Config
from model_store.model.fused import FusedModel, left_pad
from model_store.model.scoring import EvalSet
from model_store.training.losses import MASKED, earlier_items, pairs, seen_items
from model_store.training.prepare import Batch, Prepared, windows, with_earlier

BATCH = 64
PSEUDO_NEW = 0.1  # the fraction of trained items that plays the new ones in the calibration


def fit_cold_tower(
    model: FusedModel, cfg: Config, prep: Prepared, valid: EvalSet | None = None
) -> ColdInfo:
    """Train ``model.items.cold`` (joint only) for ``train.cold_epochs``, the rest frozen;
    with ``train.cold_calibration`` and validation users, then set ``model.cold_offset``
    (in ``cfg.model`` too, so the bundle keeps it) by ``calibrate_offset``."""
    tr = cfg.train
    cold = model.items.cold
    if cold is None:
        return ColdInfo(enabled=False, reason=f"fusion={cfg.model.fusion} has no cold tower")
    if isinstance(cold, torch.nn.Sequential):
        cold.load_state_dict(model.items.text_proj.state_dict())
    if tr.cold_epochs == 0:
        return ColdInfo(enabled=False, reason="train.cold_epochs = 0: the text projection")
    if prep.n_items > tr.full_softmax_max_items:
        return ColdInfo(enabled=False, reason="catalogs above full_softmax_max_items: not yet")
    t0 = time.perf_counter()
    model.eval()
    device = model.text_emb.device
    gen = torch.Generator().manual_seed(tr.seed + 1)
    opt = torch.optim.AdamW(cold.parameters(), lr=tr.cold_lr, weight_decay=tr.cold_weight_decay)
    data = windows(prep.sequences, prep.weights, cfg.model.max_len)
    losses: list[float] = []
    for _ in range(tr.cold_epochs):
        perm = torch.randperm(len(data.inputs), generator=gen)
        total, steps = 0.0, 0
        for s in range(0, len(perm), BATCH):
            batch = with_earlier(data.take(perm[s : s + BATCH]), prep.sequences).to(device)
            drop = (torch.rand(model.n_items + 1, generator=gen) < tr.cold_rate).to(device)
            drop &= model.has_id
            loss = dropped_id_loss(model, batch, drop, text_dropout=tr.cold_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach())
            steps += 1
        losses.append(total / max(steps, 1))
    calibrated: dict[str, float] = {}
    if tr.cold_calibration and valid is not None and len(valid):
        offset, want, got = calibrate_offset(
            model, valid, fraction=PSEUDO_NEW, seed=tr.seed, exposure=tr.cold_exposure
        )
        cfg.model.cold_offset = offset
        model.cfg = cfg.model
        calibrated = {"offset": round(offset, 5), "share_trained": want, "share_cold": got}
    model.mark_catalog_changed()  # the cold vectors changed: re-trace the serving encoder
    return ColdInfo(
        enabled=True,
        reason=f"trained {tr.cold_epochs} epochs with {tr.cold_rate:g} of the IDs dropped",
        epochs=tr.cold_epochs,
        rate=tr.cold_rate,
        loss=[round(x, 5) for x in losses],
        seconds=round(time.perf_counter() - t0, 2),
        **calibrated,
    )


@torch.no_grad()
def calibrate_offset(
    model: FusedModel,
    valid: EvalSet,
    *,
    fraction: float,
    seed: int,
    exposure: float = 1.0,
    draws: int = 5,
    k: int = 20,
) -> tuple[float, float, float]:
    """The ``cold_offset`` at which items seen through the cold tower take ``exposure`` times
    as many top-``k`` slots as the same items do with their trained vectors → (offset, the
    share wanted, the share reached), the median over ``draws`` random item sets.

    A random ``fraction`` of the trained items plays the new items: the validation users'
    top-``k`` lists (history excluded) are ranked once with their trained vectors and then,
    for each offset of a bisection, with their cold-tower vectors lifted by the offset. At
    ``exposure`` 1 new items get the exposure that trained items of the same appeal get, no
    more (a flood) and no less (never seen); above 1 they are explored more.
    """
    saved = model.cfg.cold_offset
    model.cfg = model.cfg.model_copy(update={"cold_offset": 0.0})
    vectors = model.item_vectors()  # (N, D)
    users, scores = [], []
    for s in range(0, len(valid), 512):
        hists = valid.histories[s : s + 512]
        user = model.user_vectors(left_pad(hists, model.cfg.max_len).to(vectors.device))
        sc = user @ vectors.T  # (B, N), the history at −inf
        r = torch.cat([torch.full((len(h),), b, dtype=torch.long) for b, h in enumerate(hists)])
        c = torch.cat([torch.as_tensor(h, dtype=torch.long) for h in hists]) - 1
        sc[r.to(sc.device), c.to(sc.device)] = -torch.inf
        users.append(user)
        scores.append(sc)
    rows = torch.nonzero(model.has_id[1:]).squeeze(-1)
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(draws):
        pick = rows[torch.from_numpy(rng.choice(len(rows), max(1, round(fraction * len(rows)))))]
        cold = vectors[pick].clone()  # the items' served vectors, their ID part replaced
        cold[:, : model.cfg.dim] = model.cold_vectors(pick + 1, leave_out_self=True)
        results.append(_bisect(users, scores, pick, cold, exposure, k, model.n_items))
    model.cfg = model.cfg.model_copy(update={"cold_offset": saved})
    results.sort()
    return results[len(results) // 2]


def _bisect(
    users: list[torch.Tensor],
    scores: list[torch.Tensor],
    pick: torch.Tensor,
    cold: torch.Tensor,
    exposure: float,
    k: int,
    n_items: int,
) -> tuple[float, float, float]:
    pseudo = torch.zeros(n_items, dtype=torch.bool, device=pick.device)
    pseudo[pick] = True

    def share(offset: float | None) -> float:
        taken = total = 0
        for user, sc in zip(users, scores, strict=True):
            if offset is not None:
                sc = sc.clone()
                lifted = user @ cold.T + offset
                sc[:, pick] = torch.where(torch.isfinite(sc[:, pick]), lifted, -torch.inf)
            top = sc.topk(k, dim=1).indices
            taken += int(pseudo[top].sum())
            total += top.numel()
        return taken / max(total, 1)

    want = min(1.0, exposure * share(None))
    lo, hi = -50.0, 50.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if share(mid) < want:
            lo = mid
        else:
            hi = mid
    offset = (lo + hi) / 2
    return offset, want, share(offset)


def dropped_id_loss(
    model: FusedModel, batch: Batch, drop: torch.Tensor, *, text_dropout: float = 0.0
) -> torch.Tensor:
    """Next-item cross-entropy with the items ``drop`` (N+1,) scored by the cold tower.

    The trained vectors and the user encoder are frozen; only the cold tower gets
    gradients. History items before and in the window are masked out of the softmax, and
    items without a trained ID (never a target) too, as in ``losses.rs_loss``.
    """
    assert model.items.cold is not None
    with torch.no_grad():
        trained = model.item_table()  # (N + 1, D), the frozen model's vectors
    every = torch.arange(model.n_items + 1, device=model.text_emb.device)
    cold = model.cold_vectors(every, leave_out_self=True, text_dropout=text_dropout)
    table = torch.where(drop.unsqueeze(-1), cold, trained)
    mask = batch.targets > 0
    y = batch.targets[mask]
    with torch.no_grad():
        h = model.sequence_states(batch.inputs, table.detach(), dropped=drop)[mask]  # (M, D)
    logits = h @ table[1:].T  # (M, N)
    hist = seen_items(batch, mask, y)
    logits = logits.index_put(pairs(hist), logits.new_tensor(MASKED))
    before = earlier_items(batch, mask, y, model.n_items)
    if before is not None:
        logits = logits.masked_fill(before[:, 1:], MASKED)
    logits = logits.masked_fill(~model.has_id[1:], MASKED)
    w = batch.weights[mask]
    return (F.cross_entropy(logits, y - 1, reduction="none") * w).sum() / w.sum()
