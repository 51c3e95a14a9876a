"""Paired statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_store.evaluation.stats import paired_bootstrap, per_user, seed_mean


def test_per_user_metrics_from_ranks() -> None:
    ranks = np.array([0, 1, 9, 10, np.inf])
    assert per_user(ranks, "recall@10").tolist() == [1, 1, 1, 0, 0]
    ndcg = per_user(ranks, "ndcg@10")
    assert ndcg[:3] == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11)])
    assert ndcg[3:].tolist() == [0, 0]
    assert per_user(ranks, "mrr@10")[:2].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown metric"):
        per_user(ranks, "map@10")


def test_seed_mean_averages_each_user_over_seeds() -> None:
    assert seed_mean([np.array([1.0, 0.0]), np.array([0.0, 0.0])]).tolist() == [0.5, 0.0]


def test_bootstrap_of_two_users_matches_the_exact_distribution() -> None:
    # d = [0, 1]: a resample of 2 users has mean 0, 0.5 or 1 with probabilities 1/4, 1/2,
    # 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1 and the mean is 0.5
    p = paired_bootstrap(np.array([0.0, 1.0]), np.zeros(2), resamples=20_000)
    assert p.mean == 0.5 and p.lo == 0.0 and p.hi == 1.0 and p.n == 2
    assert not p.beats and p.not_worse()


def test_bootstrap_sides_and_verdicts() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(400)
    better = paired_bootstrap(b + 0.05, b)  # every user gains 0.05: the interval is a point
    assert better.mean == pytest.approx(0.05) and better.lo == pytest.approx(0.05)
    assert better.beats
    noisy = paired_bootstrap(b + rng.normal(0, 0.3, 400), b)
    assert noisy.lo < noisy.mean < noisy.hi
    assert (noisy.hi - noisy.lo) == pytest.approx(2 * 1.96 * 0.3 / 20, rel=0.2)  # ≈ ±1.96 SE
    worse = paired_bootstrap(b - 0.01, b)
    assert not worse.beats and not worse.not_worse(margin=0.005)
    assert worse.not_worse(margin=0.02)
