"""The training side of the guard against shilling (issue 31): each shopper's total weight
capped, brand-new (short-history) shoppers down-weighted; a config switch with defaults
that leave ordinary shoppers untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.config import Config
from model_store.data.dataset import Dataset
from model_store.training.prepare import guard_weights, prepare


def _w(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_off_leaves_weights_alone() -> None:
    weights = [_w(1, 1), _w(5, 5, 5)]
    assert guard_weights(weights) is weights


def test_a_heavy_shopper_weighs_at_most_the_cap() -> None:
    # median event weight 1: a cap of 4 events is a total weight of 4
    heavy, plain = _w(5, 5, 5, 5), _w(1, 1, 1, 1, 1, 1, 1, 1, 1)
    out = guard_weights([heavy, plain], cap_events=4)
    assert out[0].sum() == pytest.approx(4.0)
    np.testing.assert_allclose(out[0], [1, 1, 1, 1])  # scaled together, order kept
    assert out[0].dtype == np.float32
    assert out[1].sum() == pytest.approx(4.0)  # nine plain events: capped too


def test_new_shoppers_are_down_weighted_until_they_look_like_shoppers() -> None:
    # median 1: a brand-new id's purchases weigh like views, times (2/10)²
    short, long_ = _w(5, 5), _w(*[1.0] * 12)
    out = guard_weights([short, long_], new_events=10)
    np.testing.assert_allclose(out[0], [0.04, 0.04], rtol=1e-6)
    assert out[1] is long_  # 12 >= 10: untouched
    out = guard_weights([_w(0.5, 5, 1), long_], new_events=3)  # 3 events: a shopper now
    np.testing.assert_allclose(out[0], [0.5, 5, 1])


def test_defaults_and_the_config_switch() -> None:
    cfg = Config()
    assert cfg.train.shopper_cap_events == 1000 and cfg.train.new_shopper_events == 15
    off = Config.from_dict({"train": {"shopper_cap_events": 0, "new_shopper_events": 0}})
    assert off.train.shopper_cap_events == 0
    with pytest.raises(Exception, match="new_shopper_events"):
        Config.from_dict({"train": {"new_shopper_events": -1}})


def test_prepare_applies_the_guard() -> None:
    real = [("r", f"i{k}", 1.0) for k in range(12)]
    fakes = [(f"f{n}", item, 5.0) for n in range(3) for item in ("i0", "i1", "target")]
    rows = real + fakes
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])
    inter["timestamp"] = np.arange(len(inter), dtype=np.float64)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(12)] + ["target"]})
    items["title"] = items["item_id"]
    ds = Dataset(interactions=inter, items=items, text_columns=("title",), source=Path("."))
    plain = prepare(ds, holdout=False)
    guarded = prepare(ds, holdout=False, cap_events=1000, new_events=10)
    by_user = dict(zip(guarded.users, guarded.weights, strict=True))
    np.testing.assert_allclose(by_user["f0"], [0.09] * 3, rtol=1e-6)  # (3/10)², one unit
    np.testing.assert_allclose(
        by_user["r"], dict(zip(plain.users, plain.weights, strict=True))["r"]
    )
