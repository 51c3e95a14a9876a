"""The rolling protocol: which positions are trained and ranked, the histories, per-user
metrics and the paired comparison, on a hand-made dataset and a tiny trained bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.data.dataset import Dataset, load_dataset
from model_store.errors import ConfigError
from model_store.evaluation.rolling import (
    RollingRanks,
    RollingSplit,
    compare_rolling,
    measure_rolling,
    ranks_frame,
    ranks_from_frame,
    rolling_targets,
)


def hand_made(lengths: dict[str, int]) -> Dataset:
    """User u has items u-0, u-1, ... in this order; item 'pop' is everyone's first."""
    rows = []
    for user, n in lengths.items():
        rows.append((user, "pop", 0))
        rows += [(user, f"{user}-{j}", j) for j in range(1, n)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": sorted(set(inter["item_id"]))})
    items["title"] = items["item_id"]
    return Dataset(inter, items, ("title",), Path("hand-made"))


def test_split_trains_before_the_last_2r_and_ranks_them() -> None:
    ds = hand_made({"a": 15, "b": 7, "c": 8})  # r=2: a user needs 2r + 3 = 7
    split = RollingSplit.of(ds, r=2)
    train = split.training_data().interactions
    assert train.groupby("user_id").size().to_dict() == {"a": 11, "b": 3, "c": 4}
    valid = ds.interactions[split.ranked("valid")]
    test = ds.interactions[split.ranked("test")]
    assert valid["item_id"].tolist() == ["a-11", "a-12", "b-3", "b-4", "c-4", "c-5"]
    assert test["item_id"].tolist() == ["a-13", "a-14", "b-5", "b-6", "c-6", "c-7"]
    short = RollingSplit.of(hand_made({"d": 6}), r=2)  # too short: trained on, never ranked
    assert len(short.training_data().interactions) == 6 and not short.ranked("test").any()
    with pytest.raises(ConfigError, match="r=0"):
        RollingSplit.of(ds, r=0)


def test_each_target_has_everything_before_it_as_history() -> None:
    ds = hand_made({"a": 15, "b": 7})
    split = RollingSplit.of(ds, r=2)
    index = {item: k + 1 for k, item in enumerate(ds.items["item_id"])}
    name = {k: item for item, k in index.items()}
    t = rolling_targets(split, index, "test")
    assert t.users.tolist() == ["a", "a", "b", "b"]
    assert [name[k] for k in t.data.targets] == ["a-13", "a-14", "b-5", "b-6"]
    # b-6's history: b's first 6 items, the valid targets b-3, b-4 and test b-5 included
    assert [name[k] for k in t.data.histories[3]] == ["pop", "b-1", "b-2", "b-3", "b-4", "b-5"]
    assert len(t.data.histories[0]) == 13
    # tail: at most TAIL_MAX training interactions; every item here is rare
    assert t.tail.all()
    # an item the catalog lacks is neither a target nor in a history
    del index["b-5"]
    t = rolling_targets(split, index, "test")
    assert [name[k] for k in t.data.histories[-1]][-2:] == ["b-3", "b-4"]
    assert len(t.data) == 3


def test_per_user_metric_averages_a_users_targets_first() -> None:
    ranks = RollingRanks(np.array(["a", "a", "b"]), np.array([0.0, np.inf, 3.0]))
    users, values = ranks.per_user("recall@20")
    assert users.tolist() == ["a", "b"] and values.tolist() == [0.5, 1.0]
    assert ranks.mean("recall@20") == 0.75  # per user, not per target (2/3)
    assert np.isnan(ranks.subset(np.zeros(3, dtype=bool)).mean("ndcg@10"))


def test_compare_is_paired_over_users_and_frames_round_trip() -> None:
    users = np.repeat(np.array([f"u{i}" for i in range(200)]), 5)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 60, len(users)).astype(float)
    same = compare_rolling(RollingRanks(users, base), RollingRanks(users, base), "ndcg@10")
    assert same[2].mean == 0.0 and same[2].lo == 0.0 and same[2].hi == 0.0
    better = RollingRanks(users, np.maximum(base - 10, 0))
    ma, mb, paired = compare_rolling(better, RollingRanks(users, base), "recall@20")
    assert ma > mb and paired.beats and paired.n == 200
    frame = ranks_frame({"warm": better, "tail": better.subset(base < 5), "short": better})
    back = ranks_from_frame(frame)
    assert back["tail"].users.tolist() == users[base < 5].tolist()
    np.testing.assert_array_equal(back["warm"].ranks, better.ranks)


def test_measure_on_a_tiny_trained_model(tiny_dataset: Path) -> None:
    from model_store.config import Config
    from model_store.data.movielens import default_cache_dir
    from model_store.training.pipeline import train

    ds = load_dataset(tiny_dataset)
    split = RollingSplit.of(ds)
    cfg = Config.from_dict({"model": {"dim": 16, "max_len": 20}, "train": {"epochs": 1}})
    trained = train(split.training_data(), cfg, cache_dir=default_cache_dir())
    groups = measure_rolling(trained.bundle, split, "valid")
    n_targets = int(split.ranked("valid").sum())
    assert len(groups["warm"].ranks) == len(groups["short"].ranks) == n_targets
    assert 0 < len(groups["tail"].ranks) <= n_targets
    assert np.isfinite(groups["warm"].ranks).all()
    # the cut histories rank differently from the whole ones
    assert not np.array_equal(groups["warm"].ranks, groups["short"].ranks)
    # ranked rows are never trained on (rows, not (user, item) pairs: this data repeats)
    ranked = split.ranked("valid") | split.ranked("test")
    expected = ds.interactions[~ranked].reset_index(drop=True)
    assert split.training_data().interactions.equals(expected)
    assert len(expected) == len(ds.interactions) - 2 * n_targets
