"""`fusionrec index`, `index add`, `index remove` through the composed CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from fusionrec.cli.main import build
from indexer.publish import load_index
from model_store.bundle import store as store_mod
from model_store.bundle.io import load_bundle
from model_store.bundle.manifest import HnswParams
from model_store.catalog.table import CatalogStore
from model_store.catalog.writes import default_url

runner = CliRunner()


def test_index_add_remove_cli(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    app = build()
    res = runner.invoke(app, ["index", "--store", str(store), "--kind", "flat", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "published" in res.output and "recall@100 1.0000" in res.output
    bundle = load_bundle(store)
    assert bundle.manifest.index is not None and bundle.manifest.index.kind == "flat"

    versions = store_mod.list_versions(store)
    items = tmp_path / "new.csv"
    pd.DataFrame(
        {
            "item_id": ["n1", "n2"],
            "title": ["zumo bika", "lade fino"],
            "description": ["a new thing", "another new thing"],
        }
    ).to_csv(items, index=False)
    res = runner.invoke(
        app, ["index", "add", "--store", str(store), "--items", str(items), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    assert "catalog change 1: upserted 2 item(s)" in res.output
    # rows of the catalog table (the service's database), no new bundle version
    db = CatalogStore(default_url(store))
    rows = db.get(["n1", "n2"])
    assert rows["n1"].texts["title"] == "zumo bika" and rows["n2"].seq == 1
    assert rows["n1"].text_vec is not None and not rows["n1"].deleted
    assert store_mod.list_versions(store) == versions

    first = bundle.item_ids[0]
    res = runner.invoke(
        app, ["index", "remove", "--store", str(store), "--ids", "n1,n2", "--ids", first]
    )
    assert res.exit_code == 0, res.output
    rows = db.get(["n1", "n2", first])
    assert all(r.deleted and r.seq == 2 for r in rows.values()) and len(rows) == 3
    assert db.head() == 2 and load_index(load_bundle(store)).removed == set()
    res = runner.invoke(app, ["index", "remove", "--store", str(store), "--ids", "n1"])
    assert res.exit_code == 2 and "unknown item id(s) ['n1']" in res.output

    pd.DataFrame({"item_id": ["n3"], "title": ["kept one"]}).to_csv(items, index=False)
    add = ["index", "add", "--store", str(store), "--items", str(items), "--device", "cpu"]
    assert runner.invoke(app, add).exit_code == 0

    # compaction folds the rows into a new CURRENT at the table's head
    res = runner.invoke(app, ["index", "--store", str(store), "--compact", "--device", "cpu"])
    assert res.exit_code == 0 and "the catalog up to change 3" in res.output, res.output
    compacted = load_bundle(store)
    assert compacted.manifest.catalog_seq == 3 and compacted.version not in versions
    # n1, n2 were added and deleted after the bundle: they never reach it; n3 does
    assert compacted.item_ids == [*bundle.item_ids, "n3"]
    index = load_index(compacted)
    assert index.removed == {0} and index.ntotal == len(bundle.item_ids)
    res = runner.invoke(app, ["index", "--store", str(store), "--compact", "--device", "cpu"])
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_cli_errors_are_one_red_line(tiny_store: Path, tmp_path: Path) -> None:
    app = build()
    res = runner.invoke(app, ["index", "--store", str(tmp_path / "empty")])
    assert res.exit_code == 2
    assert "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["index", "--store", str(tiny_store), "--kind", "lsh"])
    assert res.exit_code == 2 and "valid: auto, flat, hnsw, ivfpq" in res.output
    store = tmp_path / "s"
    shutil.copytree(tiny_store, store)
    current = store_mod.current_version(store)
    res = runner.invoke(app, ["index", "remove", "--store", str(store), "--ids", "x"])
    assert res.exit_code == 2 and "unknown item id(s) ['x']" in res.output
    res = runner.invoke(
        app,
        [
            "index",
            "--store",
            str(store),
            "--kind",
            "hnsw",
            "--recall-floor",
            "1.0",
            "--device",
            "cpu",
        ],
    )
    if res.exit_code == 2:  # HNSW on 400 items may well be exact; either outcome is clean
        assert "floor" in res.output and store_mod.current_version(store) == current
    else:
        assert res.exit_code == 0, res.output


def test_index_cli_passes_hnsw_build_parameters(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    res = runner.invoke(
        build(),
        [
            "index",
            "--store",
            str(store),
            "--kind",
            "hnsw",
            "--hnsw-m",
            "8",
            "--ef-construction",
            "40",
            "--device",
            "cpu",
            "--recall-floor",
            "0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    section = load_bundle(store).manifest.index
    assert section is not None
    assert isinstance(section.params, HnswParams)
    assert section.params.m == 8 and section.params.ef_construction == 40
    assert section.params.radius > 0
    res = runner.invoke(
        build(),
        [
            "index",
            "--store",
            str(store),
            "--kind",
            "hnsw",
            "--device",
            "cpu",
            "--recall-floor",
            "0.5",
            "--text-index-min-items",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "search index over text embeddings: ivfpq of 400" in res.output
    text_section = load_bundle(store).manifest.text_index
    assert text_section is not None and text_section.n_vectors == 400
    res = runner.invoke(build(), ["index", "--store", str(store), "--hnsw-m", "2"])
    assert res.exit_code != 0 and "--hnsw-m" in res.output
