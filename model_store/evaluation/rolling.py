"""The rolling protocol: each of a user's last positions ranked, for groups with power.

Leave-one-out gives one target per user, so the long-tail group of MovieLens-100k holds
about 225 users and a Recall@20 difference has a standard error near ±0.03 (issue 32). The
rolling protocol ranks each of the last ``2R`` positions of every user with at least
``2R + 3`` interactions (``R`` = 5 by default), the history being everything before that
position:

* ``test`` — the last ``R`` positions, the figures reported;
* ``valid`` — the ``R`` positions before them, where options are chosen.

The model is trained on the positions before the last ``2R`` only (its own early-stopping
holdout is the last of those), so no ranked target was ever trained on; the ``valid``
positions appear in the ``test`` targets' histories only as events the model did not train
on, as a shopper's new events do in the service. Groups, as in
``model_store.evaluation.protocols``: ``warm`` (every target), ``tail`` (targets with at
most ``TAIL_MAX`` interactions in the training data), ``short`` (every target, its history
cut to its last ``SHORT_LEN`` items). Each user's metric is the mean over his targets of
the group, so the paired bootstrap (``model_store.evaluation.stats``) resamples users, not
targets, which are not independent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from model_store.bundle.io import Bundle
from model_store.data.dataset import Dataset
from model_store.errors import ConfigError
from model_store.evaluation.protocols import SHORT_LEN, TAIL_MAX, Stage
from model_store.evaluation.stats import Paired, paired_bootstrap, per_user
from model_store.model.scoring import EvalSet, rank_targets

Group = Literal["warm", "tail", "short"]
GROUPS: tuple[Group, ...] = ("warm", "tail", "short")
ROLLING_R = 5


@dataclass(frozen=True)
class RollingSplit:
    """Which interactions are trained on and which are ranked, per stage."""

    dataset: Dataset
    r: int
    from_end: np.ndarray  # per interaction: its position counted from the user's last (0)
    eligible: np.ndarray  # per interaction: its user has at least 2r + 3 interactions

    @classmethod
    def of(cls, dataset: Dataset, r: int = ROLLING_R) -> RollingSplit:
        if r < 1:
            raise ConfigError(f"rolling positions r={r}: must be at least 1")
        groups = dataset.interactions.groupby("user_id", sort=False)["user_id"]
        from_end = groups.cumcount(ascending=False).to_numpy()
        size = groups.transform("size").to_numpy()
        return cls(dataset, r, from_end, size >= 2 * r + 3)

    def ranked(self, stage: Stage) -> np.ndarray:
        """The interactions (bool over rows) that are targets at ``stage``."""
        lo, hi = (self.r, 2 * self.r) if stage == "valid" else (0, self.r)
        return np.asarray(self.eligible & (self.from_end >= lo) & (self.from_end < hi))

    def training_data(self) -> Dataset:
        """Every interaction but the ranked ones of both stages, in canonical order."""
        held = self.eligible & (self.from_end < 2 * self.r)
        inter = self.dataset.interactions[~held].reset_index(drop=True)
        return dataclasses.replace(self.dataset, interactions=inter)


@dataclass
class RollingRanks:
    """0-based rank of each target (inf = not ranked) and whose target it is."""

    users: np.ndarray  # (T,) user id of each target
    ranks: np.ndarray  # (T,)

    def subset(self, keep: np.ndarray) -> RollingRanks:
        return RollingRanks(self.users[keep], self.ranks[keep])

    def per_user(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(users sorted, each user's mean ``metric`` over his targets)."""
        values = per_user(self.ranks, metric)
        users, inverse = np.unique(self.users, return_inverse=True)
        sums = np.bincount(inverse, weights=values, minlength=len(users))
        counts = np.bincount(inverse, minlength=len(users))
        return users, sums / counts

    def mean(self, metric: str) -> float:
        """The mean over users of their per-user ``metric`` (nan without targets)."""
        _, values = self.per_user(metric)
        return float(values.mean()) if len(values) else float("nan")


@dataclass
class RollingTargets:
    """The targets of one stage: whose, the history before each, and which are tail."""

    users: np.ndarray  # (T,) user ids (str)
    data: EvalSet
    tail: np.ndarray  # (T,) bool


def rolling_targets(split: RollingSplit, index: dict[str, int], stage: Stage) -> RollingTargets:
    """Every target of ``stage`` the catalog ``index`` knows, with the user's interactions
    before it as its history (oldest first); a target without any history is left out."""
    inter = split.dataset.interactions
    counts = split.training_data().interactions["item_id"].value_counts()
    ranked = split.ranked(stage)
    users, hists, targets, tail = [], [], [], []
    seq: list[int] = []
    last_user = None
    rows = zip(inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), ranked, strict=True)
    for user, item, is_target in rows:
        if user != last_user:
            seq, last_user = [], user
        k = index.get(item)
        if is_target and k is not None and seq:
            users.append(str(user))
            hists.append(list(seq))
            targets.append(k)
            tail.append(int(counts.get(item, 0)) <= TAIL_MAX)
        if k is not None:
            seq.append(k)
    return RollingTargets(
        np.asarray(users, dtype=str), EvalSet(hists, targets), np.asarray(tail, dtype=bool)
    )


def measure_rolling(bundle: Bundle, split: RollingSplit, stage: Stage) -> dict[Group, RollingRanks]:
    """Rank every target of ``stage`` over the whole catalog, its history excluded."""
    t = rolling_targets(split, bundle.index_of(), stage)
    warm = RollingRanks(t.users, rank_targets(bundle.model, t.data)[0])
    short_hists = [h[-SHORT_LEN:] for h in t.data.histories]
    short = rank_targets(bundle.model, EvalSet(short_hists, t.data.targets))[0]
    return {
        "warm": warm,
        "tail": warm.subset(t.tail),
        "short": RollingRanks(t.users, short),
    }


def compare_rolling(
    a: RollingRanks, b: RollingRanks, metric: str, *, seed: int = 0
) -> tuple[float, float, Paired]:
    """(mean of a, mean of b, paired a − b over the users both rank)."""
    ua, va = a.per_user(metric)
    ub, vb = b.per_user(metric)
    common = np.intersect1d(ua, ub)
    va = va[np.searchsorted(ua, common)]
    vb = vb[np.searchsorted(ub, common)]
    return float(va.mean()), float(vb.mean()), paired_bootstrap(va, vb, seed=seed)


def ranks_frame(groups: dict[Group, RollingRanks]) -> pd.DataFrame:
    """The ranks of every group as one table (group, user_id, rank), to save and compare."""
    parts = [
        pd.DataFrame({"group": g, "user_id": r.users.astype(str), "rank": r.ranks})
        for g, r in groups.items()
    ]
    return pd.concat(parts, ignore_index=True)


def ranks_from_frame(frame: pd.DataFrame) -> dict[Group, RollingRanks]:
    """Inverse of ``ranks_frame``."""
    out: dict[Group, RollingRanks] = {}
    for g in GROUPS:
        part = frame[frame["group"] == g]
        out[g] = RollingRanks(part["user_id"].astype(str).to_numpy(), part["rank"].to_numpy())
    return out
