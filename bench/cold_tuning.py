"""Choosing the cold tower and the ID shrinkage on the validation users (not a test).

    python bench/cold_tuning.py --phase cold [--seed 0] [--epochs 2,5,10]
                                [--rates 0.1,0.3,0.5] [--lrs 1e-3]
    python bench/cold_tuning.py --phase shrinkage --config chosen.json [--kappas 0,5,20,50]

``cold``: trains the joint model once on the MovieLens-100k training data with 10 % of the
catalog held out (``--cold-seed``), then, for each cold-tower option, trains the tower on a copy
of it and measures the ``cold`` protocol at the **valid** stage (users whose valid item is
a held-out item, their train history). ``shrinkage``: trains the joint model (with the
config's cold tower) on all the training data and measures the ``warm``, ``tail`` and
``short`` protocols at the valid stage for each κ. Only validation users are ranked: the
test items are never looked at. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import tempfile
from pathlib import Path

from model_store.config import Config
from model_store.data import movielens
from model_store.data.dataset import load_dataset
from model_store.evaluation.protocols import Split, cold_items, measure_cold, measure_warm
from model_store.model.item_tower import NeighbourTower
from model_store.training.coldstart import PSEUDO_NEW, calibrate_offset, fit_cold_tower
from model_store.training.pipeline import Trained, train
from model_store.training.trainer import validation_set


def copy_trained(t: Trained) -> Trained:
    bundle = copy.copy(t.bundle)
    bundle.model = copy.deepcopy(t.bundle.model)
    return Trained(bundle, t.result, t.lora, t.prep)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("cold", "shrinkage"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold-seed", type=int, default=0)
    ap.add_argument("--epochs", default="2,5,10")
    ap.add_argument("--rates", default="0.1,0.3,0.5")
    ap.add_argument("--lrs", default="1e-3")
    ap.add_argument("--towers", default="mlp", help="mlp, neighbours, hybrid")
    ap.add_argument("--ks", default="20", help="neighbours of the neighbour tower")
    ap.add_argument("--offsets", default="0", help="cold_offset values to measure each tower at")
    ap.add_argument(
        "--exposures",
        default="",
        help="instead of --offsets: the offsets coldstart.calibrate_offset finds for these",
    )
    ap.add_argument("--dropouts", default="0")
    ap.add_argument("--decays", default="0")
    ap.add_argument("--kappas", default="0,5,20,50")
    ap.add_argument("--text-weights", default="0", help="shrinkage phase: joint text_weight")
    ap.add_argument("--config", type=Path, default=None)
    a = ap.parse_args()
    raw = movielens.fetch_raw(movielens.default_cache_dir())
    data = movielens.write_dataset(raw, Path(tempfile.mkdtemp()) / "ml-100k")
    split = Split.of(load_dataset(data))
    cold = cold_items(split.dataset, 0.1, a.cold_seed)
    base = Config.from_file(a.config) if a.config else Config()
    base.train.seed = a.seed
    cache = movielens.default_cache_dir()
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, seed {a.seed}, cold seed "
        f"{a.cold_seed}, valid stage only\n"
    )

    if a.phase == "shrinkage":
        shrinkage(
            split,
            base,
            [float(k) for k in a.kappas.split(",")],
            [float(w) for w in a.text_weights.split(",")],
        )
        return
    held_out = train(split.training_data(without=cold), base, cache_dir=cache)
    print(
        "| tower | cold epochs | rate | lr | text dropout | weight decay | offset | cold users "
        "| cold R@20 | cold NDCG@10 | cold share | warm R@20 (same model) | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    towers = [
        (tw, int(k))
        for tw in a.towers.split(",")
        for k in (a.ks.split(",") if tw in ("neighbours", "hybrid") else ["0"])
    ]
    options = [("mlp", 0, 0, 0.1, 1e-3, 0.0, 0.0)] + [
        (tw, k, int(e), float(r), float(lr), float(dr), float(wd))
        for tw, k in towers
        for e in a.epochs.split(",")
        for r in a.rates.split(",")
        for lr in a.lrs.split(",")
        for dr in a.dropouts.split(",")
        for wd in a.decays.split(",")
    ]
    for tower, k, epochs, rate, lr, dropout, decay in options:
        t = copy_trained(held_out)
        cfg = base.model_copy(deep=True)
        cfg.train.cold_epochs, cfg.train.cold_rate, cfg.train.cold_lr = epochs, rate, lr
        cfg.train.cold_dropout, cfg.train.cold_weight_decay = dropout, decay
        if tower in ("neighbours", "hybrid"):
            cfg.model.cold_tower, cfg.model.cold_neighbours = tower, k  # type: ignore[assignment]
            t.bundle.model.cfg = t.bundle.model.items.cfg = cfg.model
            text_dim = t.bundle.model.text_emb.shape[1] if tower == "hybrid" else 0
            t.bundle.model.items.cold = NeighbourTower(cfg.model.dim, k, text_dim=text_dim)
        cfg.train.cold_calibration = False
        info = fit_cold_tower(t.bundle.model, cfg, t.prep)
        offsets = [float(x) for x in a.offsets.split(",")]
        if a.exposures:
            valid = validation_set(cfg, t.prep)
            assert valid is not None
            offsets = [
                calibrate_offset(
                    t.bundle.model, valid, fraction=PSEUDO_NEW, seed=a.seed, exposure=float(x)
                )[0]
                for x in a.exposures.split(",")
            ]
        for offset in offsets:
            t.bundle.model.cfg = cfg.model.model_copy(update={"cold_offset": offset})
            m = measure_cold(t.bundle, split, cold)
            c = m.ranks[("cold", "valid")].metrics()
            w = m.ranks[("warm", "valid")].metrics()
            name = f"{tower} k={k}" if tower != "mlp" else tower
            print(
                f"| {name} | {epochs} | {rate:g} | {lr:g} | {dropout:g} | {decay:g} | "
                f"{offset:g} | {int(c['users'])} | {c['recall@20']:.4f} | {c['ndcg@10']:.4f} | "
                f"{m.cold_share['valid']:.3f} | {w['recall@20']:.4f} | {info.seconds:.0f} |",
                flush=True,
            )


def shrinkage(split: Split, base: Config, kappas: list[float], weights: list[float]) -> None:
    full = train(split.training_data(), base, cache_dir=movielens.default_cache_dir())
    print("| κ | text weight | warm NDCG@10 | warm R@20 | tail R@20 (n) | short NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for kappa, weight in ((k, w) for k in kappas for w in weights):
        t = copy_trained(full)
        update = {"id_shrinkage": kappa, "text_weight": weight}
        t.bundle.model.cfg = t.bundle.model.cfg.model_copy(update=update)
        m = measure_warm(t.bundle, split)
        w = m.ranks[("warm", "valid")].metrics()
        tail = m.ranks[("tail", "valid")].metrics()
        short = m.ranks[("short", "valid")].metrics()
        print(
            f"| {kappa:g} | {weight:g} | {w['ndcg@10']:.4f} | {w['recall@20']:.4f} | "
            f"{tail['recall@20']:.4f} ({int(tail['users'])}) | {short['ndcg@10']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
