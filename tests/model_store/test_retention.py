"""`fusionrec gc`: old versions go, CURRENT and what a live replica serves never do."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from fusionrec.cli.main import build
from model_store.bundle import store as store_mod
from model_store.bundle.retention import SERVING, collect, report_serving, served_versions
from tests.helpers.bundles import clone_version

runner = CliRunner()


def test_gc_keeps_current_the_newest_and_the_served(store: Path) -> None:
    first = store_mod.current_version(store)
    clones = [clone_version(store) for _ in range(4)]  # each clone becomes CURRENT
    versions = store_mod.list_versions(store)
    oldest = versions[0]
    report_serving(store, oldest)  # this (live) process serves the oldest one
    (store / SERVING / "gone-host-1.json").write_text(
        json.dumps({"version": versions[1], "at": time.time() - 3600})  # a dead replica
    )
    assert served_versions(store) == {oldest}
    store_mod.set_current(store, clones[1])  # rolled back: CURRENT is not the newest
    removed, kept = collect(store, 1, dry_run=True)
    assert store_mod.list_versions(store) == versions  # a dry run removes nothing
    res = runner.invoke(build(), ["gc", "--store", str(store), "--keep", "1"])
    assert res.exit_code == 0, res.output
    left = store_mod.list_versions(store)
    assert left == sorted({oldest, clones[1], clones[-1]}) == sorted(kept)
    assert set(removed) == set(versions) - set(left) and first in {oldest, *removed}
    assert not [p for p in store.iterdir() if p.name.startswith(".gc-")]
    assert store_mod.current_version(store) == clones[1]
    res = runner.invoke(build(), ["gc", "--store", str(store), "--keep", "0"])
    assert res.exit_code == 2 and "at least 1" in res.output
