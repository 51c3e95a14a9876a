"""The evaluation protocols: the splits they make and the cold items they add back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.catalog.changes import prepare_change
from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.data.movielens import default_cache_dir
from model_store.errors import ConfigError
from model_store.evaluation.protocols import (
    TAIL_MAX,
    Split,
    add_cold_items,
    cold_items,
    measure_cold,
    measure_warm,
    share_of,
)
from model_store.training.pipeline import train

TINY = {"model": {"dim": 16, "max_len": 10}, "train": {"epochs": 2, "rerank": False}}


def test_cold_split_removes_exactly_the_chosen_items(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    split = Split.of(ds)
    cold = cold_items(ds, 0.1, seed=3)
    assert len(cold) == 40 and cold == cold_items(ds, 0.1, seed=3)
    assert cold != cold_items(ds, 0.1, seed=4)
    full = split.training_data()
    assert len(full.interactions) == len(ds.interactions) - len(split.test)
    fit = split.training_data(without=cold)
    assert not set(fit.interactions["item_id"]) & cold
    assert not set(fit.items["item_id"]) & cold
    assert len(fit.items) == len(ds.items) - 40
    kept = ~full.interactions["item_id"].isin(cold)
    assert len(fit.interactions) == int(kept.sum())
    with pytest.raises(ConfigError, match="fraction"):
        cold_items(ds, 1.5, seed=0)


def test_held_out_items_come_back_through_the_catalog_path(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    split = Split.of(ds)
    cold = cold_items(ds, 0.1, seed=3)
    trained = train(
        split.training_data(without=cold), Config.from_dict(TINY), cache_dir=default_cache_dir()
    )
    bundle = trained.bundle
    n0 = len(bundle.item_ids)
    records = ds.items[ds.items["item_id"].isin(cold)]
    want = prepare_change(bundle, records.to_dict("records"), device="cpu").text_emb  # type: ignore[arg-type]
    add_cold_items(bundle, ds, cold)
    assert set(bundle.item_ids[n0:]) == cold and len(bundle.item_ids) == n0 + 40
    model = bundle.model
    assert not model.has_id[n0 + 1 :].any()  # text path only
    np.testing.assert_allclose(model.text_emb[n0 + 1 :].numpy(), want, atol=1e-6)
    with torch.no_grad():
        v = model.item_vectors(torch.arange(n0 + 1, n0 + 41))
    assert torch.isfinite(v).all() and v.abs().sum() > 0


def test_protocols_measure_the_users_they_promise(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    split = Split.of(ds)
    cfg = Config.from_dict(TINY)
    full = train(split.training_data(), cfg, cache_dir=default_cache_dir())
    m = measure_warm(full.bundle, split)
    warm = m.ranks[("warm", "test")]
    assert len(warm.users) == len(split.test)
    counts = split.training_data().interactions["item_id"].value_counts()
    target = dict(zip(split.test["user_id"], split.test["item_id"], strict=True))
    tail = m.ranks[("tail", "test")]
    assert tail.users == [u for u in warm.users if counts.get(target[u], 0) <= TAIL_MAX]
    assert len(m.ranks[("short", "test")].users) == len(warm.users)
    cold = cold_items(ds, 0.1, seed=3)
    held = train(split.training_data(without=cold), cfg, cache_dir=default_cache_dir())
    c = measure_cold(held.bundle, split, cold)
    cold_users = {u for u, i in target.items() if i in cold}
    assert set(c.ranks[("cold", "test")].users) == cold_users
    assert len(c.ranks[("warm", "test")].users) + len(cold_users) == len(split.test)
    assert c.cold_fraction == pytest.approx(40 / 400)
    assert 0.0 <= c.cold_share["test"] <= 1.0
    assert len(held.bundle.item_ids) == 360  # measured on a copy: the trained bundle is intact


def test_cold_share_counts_filled_slots() -> None:
    top = np.array([[5, 7, 0], [7, 7, 9]])  # 0 = an empty slot
    assert share_of(top, np.array([7])) == pytest.approx(3 / 5)
    assert share_of(np.zeros((2, 3), dtype=np.int64), np.array([7])) == 0.0
