"""Paired statistics: two models compared on the same users.

A per-user metric (``per_user``) is computed from each user's rank, averaged over seeds per
user, and the mean difference between two models gets a 95 % bootstrap confidence interval
from 10,000 resamples of the users (``paired_bootstrap``). "Beats" means the interval lies
above zero; "not worse" means its lower end is above ``-margin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NOT_WORSE_MARGIN = 0.005


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's ``recall@K``, ``ndcg@K`` or ``mrr@K`` from 0-based ranks (inf = missed)."""
    name, _, k_text = metric.partition("@")
    k = int(k_text)
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < k
    out = np.zeros(len(r))
    if name == "recall":
        out[hit] = 1.0
    elif name == "ndcg":
        out[hit] = 1.0 / np.log2(r[hit] + 2.0)
    elif name == "mrr":
        out[hit] = 1.0 / (r[hit] + 1.0)
    else:
        raise ValueError(f"unknown metric {metric!r}; valid: recall@K, ndcg@K, mrr@K")
    return out


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """Per-user values averaged over seeds (every array covers the same users in order)."""
    out: np.ndarray = np.mean(np.stack([np.asarray(v, np.float64) for v in per_seed]), axis=0)
    return out


@dataclass(frozen=True)
class Paired:
    """Mean of ``a − b`` over the users and its bootstrap confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def beats(self) -> bool:
        return self.lo > 0.0

    def not_worse(self, margin: float = NOT_WORSE_MARGIN) -> bool:
        return self.lo > -margin

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}] (n={self.n})"


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> Paired:
    """The mean difference ``a − b`` of two per-user arrays and its percentile interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0:
        return Paired(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, resamples, chunk):
        m = min(chunk, resamples - s)
        means[s : s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Paired(float(d.mean()), float(lo), float(hi), n)
