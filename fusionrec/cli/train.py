"""`fusionrec train`: train the fused model and publish a bundle, in this process or in
``--nproc`` processes started through torchrun."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fusionrec.cli.common import (
    ColdItems,
    ColdSeed,
    ConfigFile,
    TextCache,
    console,
    fail,
    load_config,
    metrics_table,
    out,
)
from fusionrec.forgotten import RedisUrlOption, UserKeySecretOption, forgotten_users
from model_store.config import FUSIONS, Config
from model_store.errors import ConfigError, FusionrecError

if TYPE_CHECKING:
    from model_store.data.dataset import Dataset
    from model_store.privacy.forgotten import Forgotten
    from model_store.training.trainer import TrainResult


def train(
    data: Annotated[Path, typer.Option(help="dataset directory")],
    store: Annotated[Path, typer.Option(help="bundle store root")],
    fusion: Annotated[str | None, typer.Option(help=f"one of {', '.join(FUSIONS)}")] = None,
    alpha: Annotated[float | None, typer.Option(help="weight α of L_LM in L_RS + α·L_LM")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (early stopping)")] = None,
    config: ConfigFile = None,
    seed: Annotated[int | None, typer.Option()] = None,
    no_holdout: Annotated[
        bool,
        typer.Option(
            "--no-holdout", help="train on everything; epochs from --epochs or the CURRENT bundle"
        ),
    ] = False,
    text_mode: Annotated[str | None, typer.Option(help="frozen or lora")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    cache_dir: TextCache = None,
    cold_items: ColdItems = 0.0,
    cold_seed: ColdSeed = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch intra-op threads (default FUSIONREC_THREADS, else the usable cores "
            "divided by the processes on this machine)",
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1, help="train with this many processes on this machine (starts torchrun)"
        ),
    ] = None,
    reuse_current: Annotated[
        bool,
        typer.Option(
            "--reuse-current",
            help="do nothing when CURRENT is indexed and was trained on this data and config",
        ),
    ] = False,
    redis_url: RedisUrlOption = None,
    user_key_secret: UserKeySecretOption = None,
) -> None:
    """Train the fused model and publish a new bundle version."""
    from model_store.data.movielens import default_cache_dir
    from model_store.threads import set_threads
    from model_store.training import distributed as dist_mod

    if nproc is not None and nproc > 1 and not dist_mod.from_env().distributed:
        raise typer.Exit(code=launch_torchrun(nproc))
    try:
        check_store(store)  # before a training that could not be published
        set_threads(threads)
        overrides = {
            ("model", "fusion"): fusion,
            ("train", "alpha"): alpha,
            ("train", "epochs"): epochs,
            ("train", "seed"): seed,
            ("text", "mode"): text_mode,
            ("train", "device"): device,
        }
        cfg = training_config(load_config(config), overrides, store, no_holdout=no_holdout)
        dataset = training_data(data, cfg, cold_items, cold_seed)
        if reuse_current and current_is_reusable(store, dataset, cfg):
            return
        forgotten = forgotten_users(store, redis_url=redis_url, user_key_secret=user_key_secret)
        ranks = dist_mod.init(cfg.train.device)
        try:
            path, result = run_training(
                dataset,
                cfg,
                store,
                cache_dir or default_cache_dir(),
                show=ranks.main,
                forgotten=forgotten,
            )
        finally:
            dist_mod.shutdown()
    except FusionrecError as exc:
        raise fail(exc) from exc
    if ranks.main:
        print_trained(path, result, store)


def with_overrides(cfg: Config, values: Mapping[tuple[str, str], object]) -> Config:
    """``cfg`` with the command-line options that were given; validated like a file."""
    raw = cfg.to_dict()
    for (section, key), value in values.items():
        if value is not None:
            raw[section][key] = value
    return Config.from_dict(raw, source="command-line options")


def training_config(
    cfg: Config, overrides: Mapping[tuple[str, str], object], store: Path, *, no_holdout: bool
) -> Config:
    """The config file (or defaults) with the options given; ``--no-holdout`` trains on
    everything for ``--epochs``, or for the best epoch of the CURRENT bundle."""
    cfg = with_overrides(cfg, overrides)
    if not no_holdout:
        return cfg
    epochs = overrides[("train", "epochs")]
    retrain_epochs = epochs if epochs is not None else epochs_to_retrain(store)
    return with_overrides(cfg, {("train", "holdout"): False, ("train", "epochs"): retrain_epochs})


def training_data(data: Path, cfg: Config, cold_items: float, cold_seed: int) -> Dataset:
    """The dataset to train on, without the ``--cold-items`` held out."""
    from model_store.data.dataset import load_dataset

    dataset = load_dataset(data, text_columns=cfg.text.text_columns)
    if dataset.duplicates_dropped:
        out.print(
            f"{dataset.duplicates_dropped} duplicate interaction row(s) (same user_id, "
            "item_id and timestamp) counted once"
        )
    if cold_items > 0:
        from model_store.evaluation.protocols import cold_items as pick_cold
        from model_store.evaluation.protocols import without_items

        dataset = without_items(dataset, pick_cold(dataset, cold_items, cold_seed))
    return dataset


def current_is_reusable(store: Path, dataset: Dataset, cfg: Config) -> bool:
    """``--reuse-current``: whether CURRENT already is this training (said either way)."""
    from model_store.training.pipeline import reusable_current

    version, why = reusable_current(store, dataset, cfg)
    hint = " (`make retrain` or no --reuse-current trains anyway)" if version else ""
    console.print(
        f"{'reusing' if version else 'training'}: {why}{hint}", highlight=False, soft_wrap=True
    )
    return version is not None


def check_store(store: Path) -> None:
    """``--store`` must be (or become) a writable directory; checked before any work."""
    if store.exists() and not store.is_dir():
        raise ConfigError(f"--store {store} is a file, not a store directory")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--store {store}: cannot create the store directory: {exc}") from exc
    if not os.access(store, os.W_OK | os.X_OK):
        raise ConfigError(f"--store {store} is not writable by this user")


def epochs_to_retrain(store: Path) -> int:
    """--no-holdout without --epochs: the best epoch of the CURRENT bundle."""
    from model_store.bundle.io import read_manifest
    from model_store.bundle.store import resolve_version

    try:
        return max(1, read_manifest(resolve_version(store, None)).metrics.best_epoch)
    except FusionrecError as exc:
        raise ConfigError(
            "--no-holdout needs --epochs, or a CURRENT bundle trained with holdout "
            f"to take its best epoch from ({exc})"
        ) from exc


def launch_torchrun(nproc: int) -> int:
    """``fusionrec train --nproc N ...`` → ``torchrun --standalone --nproc-per-node N -m
    fusionrec train ...`` (the same options without --nproc); its exit status."""
    import subprocess

    args = sys.argv[1:]
    rest: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "fusionrec", *rest]
    console.print(f"starting {nproc} processes: torchrun {' '.join(cmd[4:])}", highlight=False)
    return subprocess.run(cmd, check=False).returncode


def run_training(
    dataset: Dataset,
    cfg: Config,
    store: Path,
    cache_dir: Path,
    *,
    show: bool,
    forgotten: Forgotten,
) -> tuple[Path, TrainResult]:
    """``train_and_publish`` with its progress (``fusionrec.cli.progress``); none on ranks
    > 0 (``show`` False)."""
    from fusionrec.cli.progress import training_progress
    from model_store.training.pipeline import train_and_publish

    if not show:
        return train_and_publish(dataset, cfg, store, forgotten=forgotten, cache_dir=cache_dir)
    n_items, n_interactions = len(dataset.items), len(dataset.interactions)
    with training_progress(cfg, n_items, n_interactions) as (on_epoch, on_texts):
        return train_and_publish(
            dataset,
            cfg,
            store,
            forgotten=forgotten,
            cache_dir=cache_dir,
            on_epoch=on_epoch,
            text_progress=on_texts,
        )


def print_trained(path: Path, result: TrainResult, store: Path) -> None:
    out.print(f"bundle: {path}")
    out.print(
        f"report: {path / 'report.html'} (fusionrec report --store {store} --open)", soft_wrap=True
    )
    out.print(
        f"best epoch {result.best_epoch} of {result.epochs_run}; "
        f"{result.seconds:.1f} s; fusion head: {result.rerank.reason}"
    )
    if result.valid_metrics:
        out.print(
            metrics_table(
                "validation (last item per user, full ranking)", {"valid": result.valid_metrics}
            )
        )
