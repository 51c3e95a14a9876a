"""Training past one process (not a test): `fusionrec train` with 1 and N processes, and two
trainings sharing the machine with different intra-op threads.

    python bench/train_ddp.py procs --data DIR [--procs 1,2] [--epochs 3] [--config cfg.json]
    python bench/train_ddp.py concurrent --data data/movielens-100k [--threads 2,1]
                                         [--batch-size 16] [--repeats 1]

``procs``: for each process count, a fresh store, ``fusionrec train --nproc P --epochs E``
(torchrun, gloo on the CPU); wall seconds, seconds per epoch (from the manifest: training
steps + validation), training windows per second (windows of one epoch ÷ seconds per
epoch), peak RSS of the largest process, validation NDCG@10 after the same epochs.
``concurrent``: two ``bench/train_step.py`` runs at once with ``--threads T`` each, for
each T; their median seconds per epoch (the issue's two jobs on one box).
Run it alone on the machine (flock /work/heavy.lock on the development box).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def windows_per_epoch(data: Path, config: Path | None) -> int:
    from model_store.config import Config
    from model_store.data.dataset import load_dataset
    from model_store.training.prepare import prepare, windows

    cfg = Config.from_file(config) if config else Config()
    prep = prepare(load_dataset(data, text_columns=cfg.text.text_columns), holdout=True)
    return len(windows(prep.sequences, prep.weights, cfg.model.max_len).inputs)


def procs(a: argparse.Namespace) -> None:
    n_windows = windows_per_epoch(a.data, a.config)
    print(f"{n_windows:,} training windows per epoch, {a.epochs} epochs\n")
    print(
        "| processes | wall s | s per epoch | windows/s | peak RSS per process (MB) "
        "| valid NDCG@10 | best epoch |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in (int(x) for x in a.procs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "store"
            cmd = [sys.executable, "-m", "fusionrec", "train", "--data", str(a.data)]
            cmd += ["--store", str(store), "--epochs", str(a.epochs), "--nproc", str(p)]
            if a.config:
                cmd += ["--config", str(a.config)]
            t0 = time.perf_counter()
            # each run in its own child, so RUSAGE_CHILDREN's peak is this run's processes
            probe = (
                "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)"
            )
            res = subprocess.run(
                [sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=False
            )
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(res.stderr[-3000:])
            rss_mb = int(res.stdout.strip().splitlines()[-1]) / 1024
            version = (store / "CURRENT").read_text().strip()
            m = json.loads((store / version / "manifest.json").read_text())["metrics"]
            spe = m["seconds_per_epoch"]
            print(
                f"| {p} | {wall:.1f} | {spe:.2f} | {n_windows / spe:,.0f} | {rss_mb:.0f} "
                f"| {m['valid']['ndcg@10']:.4f} | {m['best_epoch']} |"
            )


def concurrent(a: argparse.Namespace) -> None:
    print("| threads each | job 1 s per epoch | job 2 s per epoch | wall s |")
    print("|---|---|---|---|")
    for t in (int(x) for x in a.threads.split(",")):
        cmd = [sys.executable, str(ROOT / "bench" / "train_step.py"), "--data", str(a.data)]
        cmd += ["--batch-sizes", str(a.batch_size), "--repeats", str(a.repeats)]
        cmd += ["--threads", str(t)]
        t0 = time.perf_counter()
        jobs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [j.communicate()[0] for j in jobs]
        wall = time.perf_counter() - t0
        secs = []
        for out in outs:
            row = re.search(rf"^\| {a.batch_size} \| \d+ \| ([\d.]+) \|", out, re.M)
            if row is None:
                raise SystemExit(out)
            secs.append(float(row.group(1)))
        print(f"| {t} | {secs[0]:.2f} | {secs[1]:.2f} | {wall:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("procs")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--config", type=Path)
    c = sub.add_parser("concurrent")
    c.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    c.add_argument("--threads", default="2,1")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} usable cores\n"
    )
    if a.mode == "procs":
        procs(a)
    else:
        concurrent(a)


if __name__ == "__main__":
    main()
