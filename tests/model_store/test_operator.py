"""What an operator sees and sets: intra-op threads, the plain progress lines of a log, and
`make run`'s choice to reuse CURRENT instead of training again."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fusionrec.cli.main import build
from indexer.publish import index_bundle
from model_store import threads
from model_store.bundle import store as store_mod
from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.errors import ConfigError
from model_store.progress import stage_lines
from model_store.training.epochs import EpochRow
from model_store.training.pipeline import reusable_current

ROOT = Path(__file__).resolve().parents[2]
# the config of tests.helpers.bundles.train_tiny, which made tiny_store
TINY = {
    "model": {"fusion": "joint", "dim": 32, "max_len": 20},
    "train": {"epochs": 3, "rerank": False, "rerank_epochs": 2},
}


def test_threads_default_to_the_cores_divided_by_local_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.resolve_threads(None) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.resolve_threads(None) == 1
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.resolve_threads(None) == 3
    assert threads.resolve_threads(2) == 2  # --threads wins
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ConfigError, match="FUSIONREC_THREADS='many'"):
        threads.resolve_threads(None)


def test_set_threads_sets_torch() -> None:
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_plain_lines() -> None:
    row = EpochRow(2, loss_rs=5.0, loss_lm=0.5, valid={"ndcg@10": 0.1}, seconds=4.0)
    line = row.log_line(10, 1.5)
    assert line == (
        "epoch 2/10 | loss_rs 5.0000 loss_lm 0.5000 | valid_ndcg@10 0.1000 | epoch 2.5 s | "
        "elapsed 4.0 s | ETA <= 16 s"
    )
    buf = io.StringIO()
    advance = stage_lines("encode", 100, stream=buf)
    for _ in range(20):
        advance(5, None)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("encode: 100/100 items (100%)")


def test_reuse_only_an_indexed_current_of_the_same_data_and_config(
    tiny_store: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    dataset = load_dataset(tiny_dataset)
    cfg = Config.from_dict(TINY)
    version, why = reusable_current(store, dataset, cfg)
    assert version is None and "has no index" in why
    index_bundle(store, kind="flat", device="cpu")
    indexed = store_mod.current_version(store)
    version, why = reusable_current(store, dataset, cfg)
    assert version == indexed and "is indexed and was trained on this data" in why
    other = Config.from_dict({**TINY, "train": {**TINY["train"], "seed": 1}})
    version, why = reusable_current(store, dataset, other)
    assert version is None and "config differs" in why
    changed = tmp_path / "data"
    shutil.copytree(tiny_dataset, changed)
    inter = pd.read_csv(changed / "interactions.csv", dtype=str)
    inter.iloc[:-1].to_csv(changed / "interactions.csv", index=False)
    version, why = reusable_current(store, load_dataset(changed), cfg)
    assert version is None and "data changed" in why
    version, why = reusable_current(tmp_path / "nothing", dataset, cfg)
    assert version is None and "no usable CURRENT" in why

    # through the commands `make run` runs: nothing is trained or indexed again
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(TINY))
    app = build()
    args = ["train", "--data", str(tiny_dataset), "--store", str(store), "--config", str(cfg_file)]
    res = CliRunner().invoke(app, [*args, "--reuse-current"])
    assert res.exit_code == 0, res.output
    assert "reusing: CURRENT" in res.output
    res = CliRunner().invoke(app, ["index", "--store", str(store), "--if-unindexed"])
    assert res.exit_code == 0 and "already indexed" in res.output, res.output
    assert store_mod.list_versions(store)[-1] == indexed == store_mod.current_version(store)


def test_make_run_reuses_and_make_retrain_forces() -> None:
    def dry(target: str) -> str:
        return subprocess.run(
            ["make", "-n", "--no-print-directory", target, "VENV=/nonexistent"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    run, retrain = dry("run"), dry("retrain")
    assert "train --data data/movielens-100k --store store --reuse-current" in run
    assert "index --store store --if-unindexed" in run and "serve --store store" in run
    assert "train --data data/movielens-100k --store store  " in retrain  # no --reuse-current
    assert "--reuse-current" not in retrain
    for target in ("data", "train", "index", "serve"):
        assert dry(target).strip(), target
