"""`fusionrec events import`: a dataset directory into the event log of real SQLite and
PostgreSQL databases — user ids hashed with the store's key as the service hashes them,
idempotent by derived event id, forgotten users left out, bad ids named, and fast."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.events.importer import import_dataset, import_id
from model_store.events.log import EventStore
from model_store.privacy.keys import user_hash, user_key
from tests.helpers.postgres import postgres_server
from tests.helpers.servers import store_user_hash


@pytest.fixture(params=["sqlite", "postgresql"])
def events_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    with postgres_server() as server:
        yield server.url


def fusionrec(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "fusionrec"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_import_is_idempotent_and_hashes_users_like_the_service(
    tiny_dataset: Path, tmp_path: Path, events_url: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    args = ["events", "import", "--events", events_url, "--data", str(tiny_dataset)]
    first = fusionrec(*args, "--store", str(store))
    assert first.returncode == 0, first.stdout + first.stderr
    inter = pd.read_csv(tiny_dataset / "interactions.csv", dtype={"user_id": str, "item_id": str})
    n = len(inter.drop_duplicates(["user_id", "item_id", "timestamp"]))
    assert f"{n} interactions imported" in first.stdout and f"{n} new events" in first.stdout
    again = fusionrec(*args, "--store", str(store))
    assert again.returncode == 0 and "0 new events" in again.stdout, again.stdout
    log = EventStore(events_url)
    frame = log.frame()
    assert len(frame) == n and frame["event_id"].is_unique
    user = str(inter["user_id"].iloc[0])
    mine = frame[frame["user_key"] == store_user_hash(store, user)]
    assert len(mine) == int((inter["user_id"] == user).sum())
    assert not set(frame["user_key"]) & set(inter["user_id"])  # never the raw ids
    row = mine.iloc[0]
    assert row["event_id"] == import_id(row["user_key"], row["item_id"], row["timestamp"], "view")
    log.close()


def test_import_needs_the_key_and_names_bad_ids(tiny_dataset: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    r = fusionrec("events", "import", "--events", url, "--data", str(tiny_dataset))
    assert r.returncode == 2 and "--store" in r.stdout + r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "items.csv").write_text("item_id,title\ni1,A\ni\x01x,B\n")
    (bad / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1.5\nu1,i\x01x,2\n")
    r = fusionrec("events", "import", "--events", url, "--data", str(bad), "--store", str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "row 2" in out and "'item_id'" in out and "U+0001" in out
    assert "Traceback" not in out


def test_import_leaves_forgotten_users_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\ni1,A\ni2,B\n")
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nann,i1,1\nbob,i2,2\n")
    key = user_key(tmp_path)
    log = EventStore(f"sqlite:///{tmp_path}/events.db")
    done = import_dataset(log, data, lambda u: user_hash(u, key), {user_hash("ann", key)})
    assert (done.rows, done.new) == (1, 1)
    assert log.frame()["user_key"].tolist() == [user_hash("bob", key)]
    log.close()


def test_a_large_import_lands_every_row_once(tmp_path: Path) -> None:
    """20,000 rows in one import: every one in the log once (speed: bench/events_import.py)."""
    n = 20_000
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"item_id": [f"i{k}" for k in range(1000)], "title": "t"}).to_csv(
        data / "items.csv", index=False
    )
    pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, 5000, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, 1000, n)],
            "timestamp": 1.7e9 + np.arange(n) * 0.5,
        }
    ).to_csv(data / "interactions.csv", index=False)
    log = EventStore(f"sqlite:///{tmp_path}/events.db")
    done = import_dataset(log, data, lambda u: user_hash(u, b"k" * 32))
    assert done.new == n == log.count()
    log.close()
