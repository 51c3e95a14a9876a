"""CLI input checks (issue 19): config type errors, --store naming a file, duplicate rows —
through the real `fusionrec` command (typer's runner), no training needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusionrec.cli.main import build
from model_store.data.dataset import load_dataset

runner = CliRunner()


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ({"model": {"dim": "64"}}, ["model.dim='64'", "expected int"]),
        ({"model": {"n_heads": 0}}, ["model.n_heads=0", "greater than or equal to 1"]),
        ({"train": {"lr": "fast"}}, ["train.lr='fast'", "expected float"]),
    ],
)
def test_config_type_errors_exit_2(
    config: dict[str, object], needles: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    res = runner.invoke(
        build(),
        [
            "train",
            "--data",
            str(tmp_path / "data"),
            "--store",
            str(tmp_path / "s"),
            "--config",
            str(path),
        ],
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in text and all(n in text for n in needles), text


def test_store_naming_a_file_is_refused_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "store.txt"
    a_file.write_text("not a store")
    res = runner.invoke(
        build(), ["train", "--data", str(tmp_path / "no-data"), "--store", str(a_file)]
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "is a file" in text, text
    assert "Traceback" not in text and "dataset" not in text  # refused before the data


def test_duplicate_interaction_rows_are_counted_once(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\nb,Beta\n")
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\nu1,a,1\nu1,a,1\nu1,b,2\nu1,a,1\nu2,a,1\nu2,a,3\n"
    )
    ds = load_dataset(tmp_path)
    assert ds.duplicates_dropped == 2  # u1,a,1 three times -> once; u2's differ in time
    assert ds.interactions[["user_id", "item_id"]].values.tolist() == [
        ["u1", "a"],
        ["u1", "b"],
        ["u2", "a"],
        ["u2", "a"],
    ]
