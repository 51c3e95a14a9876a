"""The fusion head's serving cost on a store's CURRENT bundle: µs per request of the served
rerank (features + head, traced as the service calls it) over 200 candidates, at batch 1
and 32 — the figure a training run records in the manifest (``rerank.cost_us_batch1``),
measured again on today's code.

    python bench/head_cost.py --store /tmp/mlstore [--candidates 200] [--reps 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()

    from model_store.bundle.io import load_bundle
    from model_store.training.head import serving_cost

    torch.set_num_threads(1)  # as the service runs it (FUSIONREC_TORCH_THREADS=1)
    bundle = load_bundle(args.store)
    recorded = bundle.manifest.rerank
    with torch.inference_mode():
        cost = serving_cost(bundle.model, args.candidates, reps=args.reps)
    print("| batch | µs per request now | recorded at training |")
    print("|---:|---:|---:|")
    for b, field in ((1, "cost_us_batch1"), (32, "cost_us_batch32")):
        then = getattr(recorded, field, None) if recorded is not None else None
        print(f"| {b} | {cost[b]:.0f} | {'—' if then is None else f'{then:.0f}'} |")


if __name__ == "__main__":
    main()
