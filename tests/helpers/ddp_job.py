"""A job the distributed tests start under torchrun: ``python -m torch.distributed.run
--standalone --nproc-per-node 2 tests/helpers/ddp_job.py MODE DATA OUT``.

* ``step``: one DistributedDataParallel step of the trainer on each rank's shard; each rank
  saves its windows, its gradients and its weights after the step to ``OUT/rank<r>.pt``.
* ``die``: ``train_and_publish`` into the store ``OUT`` with rank 1 exiting after epoch 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from model_store.config import Config
from model_store.data import movielens
from model_store.data.dataset import load_dataset
from model_store.training import distributed as dist_mod
from model_store.training.epochs import EpochRow
from model_store.training.loop import Loop, shard
from model_store.training.pipeline import catalog_embeddings, train_and_publish
from model_store.training.prepare import prepare, with_earlier
from model_store.training.step import train_step
from model_store.training.trainer import build_model

CONFIG = {
    "model": {"fusion": "joint", "dim": 32, "max_len": 20},
    "train": {"epochs": 3, "rerank": False, "rerank_epochs": 2},
}


def step(data: Path, out: Path) -> None:
    cfg = Config.from_dict(CONFIG)
    dataset = load_dataset(data)
    prep = prepare(dataset, holdout=True)
    prep.text_emb = catalog_embeddings(dataset, cfg, cache_dir=movielens.default_cache_dir())
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, prep, torch.device("cpu"))
    loop = Loop.start(cfg, prep, model, None)
    model.train()
    perm = shard(torch.randperm(len(loop.data.inputs), generator=loop.gen), loop.ranks)
    batch = with_earlier(loop.data.take(perm[: loop.rank_batch]), prep.sequences)
    train_step(model, batch, cfg, loop.opt, sampler_logq=None, ddp=loop.ddp)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    flat = torch.cat([g.flatten() for g in grads.values()])
    saved = {
        "windows": perm[: loop.rank_batch].clone(),
        "grads": grads,
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads_equal": dist_mod.all_equal(flat),
    }
    torch.save(saved, out / f"rank{loop.ranks.rank}.pt")


def die(data: Path, store: Path) -> None:
    ranks = dist_mod.current()

    def on_epoch(row: EpochRow) -> None:
        if ranks.rank == 1 and row.epoch >= 1:
            os._exit(3)  # a rank dying mid-training

    train_and_publish(
        load_dataset(data),
        Config.from_dict(CONFIG),
        store,
        cache_dir=movielens.default_cache_dir(),
        on_epoch=on_epoch,
    )


def main() -> None:
    mode, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    dist_mod.init("cpu")
    try:
        (step if mode == "step" else die)(data, out)
    finally:
        dist_mod.shutdown()


if __name__ == "__main__":
    main()
