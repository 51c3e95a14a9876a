"""The `fusionrec` model commands through typer's runner, on a tiny real dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from fusionrec.cli.main import build
from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod

runner = CliRunner()


def test_train_evaluate_and_no_holdout(tiny_dataset: Path, tmp_path: Path) -> None:
    app = build()
    store = tmp_path / "store"
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_dataset),
            "--store",
            str(store),
            "--epochs",
            "2",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "bundle:" in res.output and "ndcg@10" in res.output
    first = store_mod.current_version(store)
    manifest = bundle_mod.read_manifest(store / first)
    assert manifest.config.train.seed == 3

    inter = pd.read_csv(tiny_dataset / "interactions.csv", dtype=str)
    test = inter.groupby("user_id").tail(1)[["user_id", "item_id"]]
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "metrics.json"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--store",
            str(store),
            "--data",
            str(tiny_dataset),
            "--test",
            str(tmp_path / "test.csv"),
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"all", "warm", "cold"}
    assert 0.0 <= metrics["all"]["ndcg@10"] <= 1.0

    res = runner.invoke(
        app, ["train", "--data", str(tiny_dataset), "--store", str(store), "--no-holdout"]
    )
    assert res.exit_code == 0, res.output
    second = store_mod.current_version(store)
    assert second != first
    m2 = bundle_mod.read_manifest(store / second)
    assert m2.data.holdout is False
    assert m2.metrics.epochs_run == manifest.metrics.best_epoch


def test_bad_input_gives_clear_error_not_traceback(tmp_path: Path) -> None:
    app = build()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "items.csv").write_text("item_id,title\n1,a\n")
    (tmp_path / "d" / "interactions.csv").write_text("user_id,item_id,timestamp\nu,2,5\n")
    res = runner.invoke(
        app, ["train", "--data", str(tmp_path / "d"), "--store", str(tmp_path / "s")]
    )
    assert res.exit_code == 2
    assert "absent from the items file" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "d"),
            "--store",
            str(tmp_path / "s"),
            "--fusion",
            "deep",
        ],
    )
    assert res.exit_code == 2 and "valid: id, text, late, joint" in res.output
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--store",
            str(tmp_path / "none"),
            "--data",
            str(tmp_path / "d"),
            "--test",
            str(tmp_path / "t.csv"),
        ],
    )
    assert res.exit_code == 2 and "no bundle published" in res.output


def test_same_seed_same_metrics(tiny_dataset: Path, tmp_path: Path) -> None:
    from tests.helpers.bundles import train_tiny

    a = bundle_mod.read_manifest(train_tiny(tiny_dataset, tmp_path / "a", epochs=1))
    b = bundle_mod.read_manifest(train_tiny(tiny_dataset, tmp_path / "b", epochs=1))
    assert a.metrics.valid == b.metrics.valid
