"""Bundle round trip, integrity checks and atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.errors import BundleIntegrityError, BundleNotFoundError
from model_store.model.scoring import EvalSet, rank_targets
from tests.helpers.bundles import train_tiny


def test_round_trip_gives_identical_scores(tiny_dataset: Path, tmp_path: Path) -> None:
    from model_store.config import Config
    from model_store.data.dataset import load_dataset
    from model_store.data.movielens import default_cache_dir
    from model_store.training.pipeline import train_and_publish

    cfg = Config()
    cfg.model.dim, cfg.model.max_len, cfg.train.epochs, cfg.train.rerank = 32, 20, 2, True
    cfg.train.rerank_epochs = 2
    path, result = train_and_publish(
        load_dataset(tiny_dataset), cfg, tmp_path / "s", cache_dir=default_cache_dir()
    )
    loaded = bundle_mod.load_bundle(tmp_path / "s")
    assert loaded.version == path.name
    assert loaded.model.use_head == result.model.use_head
    hist = torch.tensor([[0, 0, 3, 5, 9], [1, 2, 3, 4, 5]])
    with torch.inference_mode():
        a = result.model.eval().user_vectors(hist) @ result.model.item_vectors().T
        b = loaded.model.user_vectors(hist) @ loaded.model.item_vectors().T
    assert torch.allclose(a, b, atol=1e-6)
    ev = EvalSet([[3, 5, 9], [1, 2, 3]], [10, 11])
    assert (rank_targets(result.model, ev)[0] == rank_targets(loaded.model, ev)[0]).all()
    manifest = loaded.manifest
    assert set(manifest.files) >= {"model.safetensors", "catalog.safetensors", "items.parquet"}
    raw = json.loads((path / "manifest.json").read_text())
    for key in ("version", "created_at", "config", "data", "metrics", "libraries"):
        assert key in raw
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in path.iterdir())


def test_edited_file_is_refused_by_hash(store: Path) -> None:
    version = store_mod.current_version(store)
    target = store / version / "catalog.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"catalog\.safetensors: sha256"):
        bundle_mod.load_bundle(store)


def test_library_mismatch_is_refused(store: Path) -> None:
    path = store / store_mod.current_version(store)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["libraries"]["torch"] = "1.0.0"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match=r"built with torch 1\.0\.0"):
        bundle_mod.load_bundle(store)


def test_missing_file_and_missing_store(store: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="no bundle published"):
        bundle_mod.load_bundle(tmp_path / "empty")
    path = store / store_mod.current_version(store)
    (path / "items.parquet").unlink()
    with pytest.raises(
        BundleIntegrityError, match=r"items\.parquet listed in the manifest is missing"
    ):
        bundle_mod.load_bundle(store)


def test_failed_publish_leaves_current_and_no_partial_version(
    store: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store_mod.current_version(store)
    versions = store_mod.list_versions(store)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "save_catalog", boom)
    with pytest.raises(OSError, match="disk full"):
        train_tiny(tiny_dataset, store, epochs=1)
    assert store_mod.current_version(store) == before
    assert store_mod.list_versions(store) == versions
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp")]
