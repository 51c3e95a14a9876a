"""Tiny real bundles for tests: trained in seconds, copied, cloned under a new version."""

from __future__ import annotations

import shutil
from pathlib import Path

from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.data import movielens


def train_tiny(
    data: Path, store: Path, *, fusion: str = "joint", epochs: int = 3, rerank: bool = False
) -> Path:
    """Train a tiny real bundle into ``store`` (a few CPU seconds) and return its path."""
    from model_store.config import Config
    from model_store.data.dataset import load_dataset
    from model_store.training.pipeline import train_and_publish

    cfg = Config.from_dict(
        {
            "model": {"fusion": fusion, "dim": 32, "max_len": 20},
            "train": {"epochs": epochs, "rerank": rerank, "rerank_epochs": 2},
        }
    )
    path, _ = train_and_publish(
        load_dataset(data), cfg, store, cache_dir=movielens.default_cache_dir()
    )
    return path


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def clone_version(store: Path) -> str:
    """Publish a copy of CURRENT under a new version name (a second valid bundle, no training)."""
    src = store / store_mod.current_version(store)
    manifest = bundle_mod.read_manifest(src)
    version = store_mod.new_version_name()
    with store_mod.staging(store, version) as staged:
        store_mod.copy_into(src, staged, list(manifest.files))
        bundle_mod.publish(store, staged, bundle_mod.child_manifest(manifest, version))
    return version


def trained_users(store: Path, *, secret: str | None = None) -> dict[str, list[str]]:
    """The CURRENT bundle's training histories by raw user id. The bundle keeps only keyed
    hashes, so the synthetic datasets' ids (u0, u1, …) are hashed with the store's key (or
    ``secret``) to find them."""
    import pandas as pd

    from model_store.privacy.keys import user_hash, user_key

    hist = pd.read_parquet(store / store_mod.current_version(store) / bundle_mod.HISTORIES_FILE)
    by_hash = {str(u): list(items) for u, items in zip(hist["user_id"], hist["items"], strict=True)}
    key = user_key(store, secret)
    found = {f"u{n}": by_hash.get(user_hash(f"u{n}", key)) for n in range(20_000)}
    return {u: h for u, h in found.items() if h is not None}


def a_trained_user(store: Path) -> str:
    """A raw user id with a training history in the CURRENT bundle."""
    return next(iter(trained_users(store)))
