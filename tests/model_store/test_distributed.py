"""torch.distributed training (gloo, 2 processes on the CPU) on the tiny synthetic dataset:
the bundle rank 0 publishes, equal gradients on every rank, a dying rank, the shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from indexer.publish import index_bundle
from model_store.bundle import store as store_mod
from model_store.bundle.io import load_bundle, read_manifest
from model_store.training import distributed as dist_mod
from model_store.training.loop import shard
from tests.helpers.ddp_job import CONFIG
from tests.helpers.servers import make_settings

ROOT = Path(__file__).resolve().parents[2]
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/2 \| loss_rs [\d.]+ loss_lm [\d.]+ \| (valid_\S+ [\d.]+ )*valid_ndcg@10 "
    r"[\d.]+ .*\| epoch [\d.]+ s \| elapsed [\d.]+ s \| (ETA <= \d+ s|last epoch)$",
    re.M,
)


def env() -> dict[str, str]:
    # the tree under test first, one thread per process on a small machine
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def fusionrec_train(
    data: Path, store: Path, cfg: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fusionrec", "train", "--data", str(data), "--store", str(store)]
    cmd += ["--config", str(cfg), *extra]
    # stdout and stderr are pipes, not a terminal: progress comes as plain lines
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, check=False)


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return subprocess.run(
        [*cmd, *args], env=env(), capture_output=True, text=True, timeout=600, check=False
    )


def test_two_processes_publish_one_bundle_that_serves(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**CONFIG, "train": {**CONFIG["train"], "epochs": 2}}))
    one = fusionrec_train(tiny_dataset, tmp_path / "one", cfg)
    assert one.returncode == 0, one.stderr
    # the progress of a run whose output is a pipe: one plain line per epoch
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(one.stderr)] == [1, 2], one.stderr
    assert "\x1b[" not in one.stderr  # no terminal control codes in a log

    store = tmp_path / "two"
    two = fusionrec_train(tiny_dataset, store, cfg, "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert "starting 2 processes" in two.stderr
    # rank 0 alone reports (and publishes): each epoch once
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(two.stderr)] == [1, 2], two.stderr
    assert two.stdout.count("bundle:") == 1
    versions = store_mod.list_versions(store)
    assert len(versions) == 1 and store_mod.current_version(store) == versions[0]
    # no staging left (.private holds the user key the histories are hashed with)
    assert not [p for p in store.iterdir() if p.name.startswith(".") and p.name != ".private"]

    m1 = read_manifest(store_mod.resolve_version(tmp_path / "one", None)).metrics
    m2 = read_manifest(store / versions[0]).metrics
    assert m2.epochs_run == m1.epochs_run == 2 and m2.batch_size == m1.batch_size
    # the same steps per epoch over all ranks: after as many epochs the figures agree
    # within the noise of 300 validation users
    assert abs(m2.valid["ndcg@10"] - m1.valid["ndcg@10"]) < 0.05, (m1.valid, m2.valid)
    assert m2.valid["ndcg@10"] > 0.05

    # the bundle loads, indexes and serves
    index_bundle(store, kind="flat", device="cpu")
    with TestClient(create_app(make_settings(store))) as client:
        r = client.post(
            "/v1/recommend",
            json={"user_id": next(iter(load_bundle(store).histories)), "k": 5},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5


def test_every_rank_has_the_same_gradients_after_a_step(tiny_dataset: Path, tmp_path: Path) -> None:
    res = torchrun(str(ROOT / "tests/helpers/ddp_job.py"), "step", str(tiny_dataset), str(tmp_path))
    assert res.returncode == 0, res.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["grads_equal"] and r1["grads_equal"]
    assert not set(r0["windows"].tolist()) & set(r1["windows"].tolist())  # own shards
    assert r0["grads"].keys() == r1["grads"].keys() and r0["grads"]
    for name, g in r0["grads"].items():
        assert torch.equal(g, r1["grads"][name]), name
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name


def test_a_rank_dying_mid_training_leaves_current_unchanged(
    tiny_store: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    before = store_mod.current_version(store)
    res = torchrun(str(ROOT / "tests/helpers/ddp_job.py"), "die", str(tiny_dataset), str(store))
    assert res.returncode != 0
    assert store_mod.current_version(store) == before
    assert store_mod.list_versions(store) == [before]


def test_shards_cover_the_epoch_with_equal_lengths() -> None:
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [shard(perm, dist_mod.Ranks(r, 3)) for r in range(3)]
    assert {len(p) for p in parts} == {4}
    assert set(torch.cat(parts).tolist()) == set(range(11))
    assert torch.equal(shard(perm, dist_mod.Ranks()), perm)  # one process: the whole epoch


def test_without_torchrun_nothing_is_initialised() -> None:
    ranks = dist_mod.init("cpu")
    assert ranks == dist_mod.Ranks() and not torch.distributed.is_initialized()
    assert dist_mod.broadcast({"a": 1.0}) == {"a": 1.0}
    assert dist_mod.mean_over_ranks({"a": 2.0}) == {"a": 2.0}


def test_index_under_torchrun_encodes_in_blocks_and_publishes_once(
    tiny_store: Path, tmp_path: Path
) -> None:
    from indexer.encode import encode_catalog
    from indexer.publish import load_index

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(tiny_store, one)
    shutil.copytree(tiny_store, two)
    index_bundle(one, kind="flat", device="cpu")
    res = torchrun("-m", "fusionrec", "index", "--store", str(two), "--kind", "flat",
                   "--device", "cpu")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("published") == 1  # rank 0 alone builds and publishes
    assert len(store_mod.list_versions(two)) == len(store_mod.list_versions(one))
    b1, b2 = load_bundle(one), load_bundle(two)
    assert b2.manifest.index is not None and b2.manifest.index.n_vectors == len(b2.item_ids)
    queries = encode_catalog(b1, rows=np.arange(20), device="cpu")
    s1, r1 = load_index(b1).search(queries, 10)
    s2, r2 = load_index(b2).search(queries, 10)
    assert np.array_equal(r1, r2) and np.allclose(s1, s2, atol=1e-5)
