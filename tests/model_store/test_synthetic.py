from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.data.dataset import load_dataset
from model_store.data.synthetic import _COMMON as COMMON
from model_store.data.synthetic import generate
from model_store.errors import ConfigError

SIZE = {"users": 200, "items": 500, "interactions": 5_000}


@pytest.fixture(scope="module")
def data_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(**SIZE, out=tmp_path_factory.mktemp("syn"), seed=3)


def test_loads(data_synthetic: Path) -> None:
    ds = load_dataset(data_synthetic)
    assert (data_synthetic / "interactions.parquet").is_file()
    assert len(ds.interactions) == 5_000 and len(ds.items) == 500
    assert ds.interactions.user_id.nunique() == 200
    assert ds.text_columns == ("title", "description", "category")
    assert ds.interactions.user_id.iloc[0].startswith("u")
    assert ds.items.item_id.iloc[0] == "i0"
    words = ds.items.description.str.split().str.len()
    assert words.min() >= 40 and words.max() <= 80 and 55 <= words.mean() <= 65
    ts = ds.interactions.groupby("user_id").timestamp.diff().dropna()
    assert (ts > 0).all()  # strictly increasing per user


def test_deterministic(data_synthetic: Path, tmp_path: Path) -> None:
    again = generate(**SIZE, out=tmp_path / "a", seed=3)
    other = generate(**SIZE, out=tmp_path / "b", seed=4)
    first = load_dataset(data_synthetic).fingerprint()
    assert load_dataset(again).fingerprint() == first
    assert load_dataset(other).fingerprint() != first


def test_csv_matches_parquet(data_synthetic: Path, tmp_path: Path) -> None:
    csv = generate(**SIZE, out=tmp_path / "csv", seed=3, fmt="csv")
    assert (csv / "items.csv").is_file() and not (csv / "items.parquet").exists()
    assert load_dataset(csv).fingerprint() == load_dataset(data_synthetic).fingerprint()


def test_sequential_topic_structure(data_synthetic: Path) -> None:
    ds = load_dataset(data_synthetic)
    topic = dict(zip(ds.items.item_id, ds.items.category, strict=True))
    inter = ds.interactions
    t = inter.item_id.map(topic).to_numpy()
    same_user = inter.user_id.to_numpy()[1:] == inter.user_id.to_numpy()[:-1]
    consecutive = float(np.mean((t[1:] == t[:-1])[same_user]))
    # chance: two random interactions of the same user, or two random interactions overall
    shares = pd.Series(t).value_counts(normalize=True)
    chance = float((shares**2).sum())
    assert consecutive > 0.6 and consecutive > 5 * chance
    # items are textually tied to their topic: same-category descriptions share vocabulary
    words = [set(d.split()) - set(COMMON) for d in ds.items.description]
    cats = ds.items.category.to_numpy()
    same, diff = [], []
    for i in range(len(words)):
        for j in range(i + 1, min(i + 40, len(words))):
            jac = len(words[i] & words[j]) / len(words[i] | words[j])
            (same if cats[i] == cats[j] else diff).append(jac)
    assert np.mean(same) > 4 * np.mean(diff)


def test_popularity_is_skewed(data_synthetic: Path) -> None:
    counts = load_dataset(data_synthetic).interactions.item_id.value_counts()
    top = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3  # top 10% of items get far more than 10% of interactions


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate(users=0, items=1, interactions=1, out=tmp_path)
