"""`fusionrec catalog import|export`: one change, all or nothing, bad rows named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from fusionrec.cli.main import build
from model_store.bundle.io import read_items
from model_store.catalog.table import CatalogStore
from model_store.catalog.writes import default_url

runner = CliRunner()


def _write(data: Path, rows: list[dict[str, object]]) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(data / "items.csv", index=False)
    return data


def test_import_is_one_change_and_export_is_the_served_catalog(store: Path, tmp_path: Path) -> None:
    app, db = build(), CatalogStore(default_url(store))
    base = read_items(store)
    good = [
        {"item_id": f"imp-{i}", "title": f"Imported {i}", "description": "bulk", "category": "x"}
        for i in range(3)
    ]
    bad = _write(tmp_path / "bad", [*good, {"item_id": "a/b", "title": "slash"}])
    res = runner.invoke(app, ["catalog", "import", "--store", str(store), "--data", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "items.csv, row 4, field item_id" in res.output and "'/'" in res.output, res.output
    unknown = _write(tmp_path / "unknown", [{**good[0], "colour": "red"}])
    res = runner.invoke(app, ["catalog", "import", "--store", str(store), "--data", str(unknown)])
    assert res.exit_code == 2 and "items.csv, row 1" in res.output and "colour" in res.output
    assert db.head() == 0  # nothing half-applied

    ok = _write(tmp_path / "ok", good)
    args = ["--store", str(store), "--data", str(ok), "--device", "cpu"]
    res = runner.invoke(app, ["catalog", "import", *args])
    assert res.exit_code == 0 and "catalog change 1: imported 3 item(s)" in res.output, res.output
    rows = db.rows_after(0)
    assert [r.item_id for r in rows] == ["imp-0", "imp-1", "imp-2"]
    assert all(r.seq == 1 and r.text_vec is not None for r in rows)

    removed = str(base["item_id"].iloc[0])
    res = runner.invoke(app, ["index", "remove", "--store", str(store), "--ids", removed])
    assert res.exit_code == 0, res.output
    out = tmp_path / "export"
    res = runner.invoke(app, ["catalog", "export", "--store", str(store), "--out", str(out)])
    assert res.exit_code == 0 and "catalog at change 2" in res.output, res.output
    exported = pd.read_csv(out / "items.csv", dtype={"item_id": str})
    ids = set(exported["item_id"])
    assert {"imp-0", "imp-1", "imp-2"} <= ids and removed not in ids
    assert len(exported) == len(base) + 3 - 1
    assert exported.set_index("item_id").loc["imp-1", "title"] == "Imported 1"
