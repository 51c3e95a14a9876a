"""Fixtures of the reliability suite: store copies, a real redis-server, live servers.

Everything is bounded so that the whole suite runs in a few minutes on 2 cores: tiny
bundles (tests/conftest.py), load threads of a few seconds, a few fuzzing examples per
operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.bundles import copy_store
from tests.helpers.servers import RedisServer, running_redis


@pytest.fixture
def rel_store(tiny_store: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny store."""
    return copy_store(tiny_store, tmp_path / "store")


@pytest.fixture
def rel_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A throw-away redis-server on a free port (stopped and restarted by the tests)."""
    with running_redis(tmp_path) as server:
        yield server
