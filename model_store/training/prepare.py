"""From a dataset to model inputs: item indices, per-user sequences, history windows.

Item ``k`` of ``Prepared.item_ids`` has index ``k + 1`` (0 is padding). A user's sequence is
cut into left-padded windows of ``max_len`` whose targets are the next items; each window
knows which user it was cut from and where it starts, so the loss can also leave out the
user's items before the window (evaluation and serving exclude the whole history).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from model_store.data.dataset import Dataset
from model_store.data.splits import holdout_last
from model_store.errors import DataError
from model_store.model.scoring import EvalSet


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Batch:
    """A training batch of left-padded history windows."""

    inputs: torch.Tensor  # (B, L) item indices, 0 = padding, most recent at L-1
    targets: torch.Tensor  # (B, L) next item index at each position, 0 = no target
    weights: torch.Tensor  # (B, L) float weight of each target
    # (B, L, K-1) the items 2..K steps ahead of each position, 0 = none (multi-target loss)
    future: torch.Tensor | None = None
    # (B, P) the user's items before the window, 0-padded: masked out of the softmax too,
    # as evaluation and serving exclude the user's whole history, not just the last L items
    earlier: torch.Tensor | None = None
    # (B,) which sequence each window was cut from, and where the window starts in it
    owner: torch.Tensor | None = None
    start: torch.Tensor | None = None

    def take(self, sel: torch.Tensor | slice) -> Batch:
        """The windows ``sel`` (all optional fields indexed alike)."""
        return Batch(
            *(None if t is None else t[sel] for t in self._fields())  # type: ignore[arg-type]
        )

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(None if t is None else t.to(device) for t in self._fields())  # type: ignore[arg-type]
        )

    def _fields(self) -> list[torch.Tensor | None]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


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


def guard_weights(
    weights: list[np.ndarray], *, cap_events: float = 0.0, new_events: int = 0
) -> list[np.ndarray]:
    """Each shopper's event weights with the guard against shilling applied.

    The unit is the median event weight. A shopper whose events weigh more than
    ``cap_events`` units has them scaled down together to that total. A shopper with
    n < ``new_events`` interactions (a brand-new id) has each event weigh at most one unit,
    times (n / ``new_events``)²: a burst of fresh ids with a few heavy events each (fake
    shoppers pushing an item) then moves the model little, and a shopper weighs fully once
    their history looks like a shopper's. 0 = off.
    """
    if not weights or (cap_events <= 0 and new_events <= 0):
        return weights
    positive = np.concatenate(weights)
    positive = positive[positive > 0]
    unit = np.float32(np.median(positive)) if len(positive) else np.float32(1.0)
    out = []
    for w in weights:
        total = float(w.sum())
        if new_events > 0 and len(w) < new_events:
            w = np.minimum(w, unit) * np.float32((len(w) / new_events) ** 2)
        elif cap_events > 0 and total > cap_events * unit:
            w = w * np.float32(cap_events * unit / total)
        out.append(w.astype(np.float32, copy=False))
    return out


def prepare(
    dataset: Dataset, *, holdout: bool, cap_events: float = 0.0, new_events: int = 0
) -> Prepared:
    """Hold out each shopper's last item (``holdout``) and index the rest; ``cap_events``
    and ``new_events`` are the shilling guard of :func:`guard_weights`."""
    items = pd.Index(dataset.items["item_id"])
    inter = dataset.interactions
    if holdout:
        train, valid = holdout_last(inter)
    else:
        train, valid = inter, inter.iloc[0:0]
    users, seqs, weights = split_by_user(train, items)
    weights = guard_weights(weights, cap_events=cap_events, new_events=new_events)
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


def crop(batch: Batch, rate: float, longest: int, gen: torch.Generator) -> Batch:
    """A random ``rate`` of the windows cut to their last 1..``longest`` items (inputs,
    targets and future targets before the cut are dropped): shoppers the service knows for
    a few items only, which full windows never show the user encoder at the last positions.
    """
    b, l = batch.inputs.shape
    chosen = torch.rand(b, generator=gen) < rate
    if not bool(chosen.any()):
        return batch
    keep = torch.randint(1, longest + 1, (b,), generator=gen)
    cut = (torch.arange(l)[None, :] < (l - keep)[:, None]) & chosen[:, None]  # (B, L)
    future = batch.future
    if future is not None:
        future = future.masked_fill(cut.unsqueeze(-1), 0)
    return dataclasses.replace(
        batch,
        inputs=batch.inputs.masked_fill(cut, 0),
        targets=batch.targets.masked_fill(cut, 0),
        weights=batch.weights.masked_fill(cut, 0.0),
        future=future,
    )
