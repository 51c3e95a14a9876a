"""Training-step benchmark (not a test): seconds per epoch of MovieLens-100k training steps.

    python bench/train_step.py [--data data/movielens-100k] [--batch-sizes 128,64,32,16]
                               [--repeats 3] [--threads 2]

Times what one epoch of ``fusionrec train`` spends in optimisation, without validation:
the default joint model over the peers' training windows (each user's last two items held
out, as in ``bench/quality.py``), through ``model_store.training.trainer.train_step`` (the step
``fit`` takes: multi-target L_RS with the user's whole history masked, + α·InfoNCE,
backward, gradient clipping, fused AdamW) and the weight average (EMA). Each
batch size runs ``--repeats`` epochs after one warm-up epoch; the table gives the median.
Run it on two checkouts to compare code versions (same machine, one after the other,
nothing else running).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.data.movielens import default_cache_dir
from model_store.evaluation.protocols import Split
from model_store.training.optim import WeightAverage, make_optimizer
from model_store.training.pipeline import catalog_embeddings
from model_store.training.prepare import prepare, windows, with_earlier
from model_store.training.step import train_step
from model_store.training.trainer import build_model


def epoch_seconds(data: Path, batch_size: int, repeats: int) -> tuple[list[float], int]:
    cfg = Config()
    dataset = load_dataset(data)
    train_ds = Split.of(dataset).training_data()
    prep = prepare(train_ds, holdout=True)
    prep.text_emb = catalog_embeddings(dataset, cfg, cache_dir=default_cache_dir())
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model(cfg, prep, device)
    model.train()
    opt = make_optimizer(cfg, model, device, None)
    average = WeightAverage(list(model.parameters()), cfg.train.ema_decay)
    rng = np.random.default_rng(0)
    times, steps = [], 0
    for _ in range(repeats + 1):
        batch_all = windows(
            prep.sequences, prep.weights, cfg.model.max_len, rng, future=cfg.train.future_targets
        )
        n_windows = len(batch_all.inputs)
        steps = -(-n_windows // batch_size)
        t0 = time.perf_counter()
        for s in range(0, n_windows, batch_size):
            # as fit builds it: the window's items and the user's items before it (masked)
            b = with_earlier(batch_all.take(slice(s, s + batch_size)), prep.sequences)
            train_step(model, b, cfg, opt, sampler_logq=None)  # the step fit takes
            average.update()
        times.append(time.perf_counter() - t0)
    return times[1:], steps  # the first epoch warms up the allocator and kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    ap.add_argument("--batch-sizes", default="128,64,32,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"torch {torch.__version__}, {a.threads} threads, median of {a.repeats} epochs\n"
    )
    print("| batch size | steps per epoch | s per epoch (median) | all epochs (s) |")
    print("|---|---|---|---|")
    for bs in (int(x) for x in a.batch_sizes.split(",")):
        secs, steps = epoch_seconds(a.data, bs, a.repeats)
        print(
            f"| {bs} | {steps} | {statistics.median(secs):.2f} | "
            + ", ".join(f"{x:.2f}" for x in secs)
            + " |"
        )


if __name__ == "__main__":
    main()
