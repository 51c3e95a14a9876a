"""`fusionrec train` as a function: dataset → text embeddings → trained model → new bundle.

The optimisation itself is ``trainer.fit``; this module encodes the catalog texts (cached on
disk), assembles the manifest and publishes the bundle atomically (``bundle.publish``) with
its training report (``training_report``). Under torchrun every rank trains; rank 0 encodes
the texts first (the others then read its cache) and alone publishes, so a rank > 0 never
writes to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.bundle.io import Bundle
from model_store.bundle.manifest import DataInfo, Dims, Manifest, TextModelInfo, TrainMetrics
from model_store.config import Config
from model_store.data.dataset import Dataset
from model_store.errors import ConfigError
from model_store.privacy.forgotten import Forgotten
from model_store.privacy.keys import keyed_users, user_key
from model_store.text.encoder import TextSpec, text_embeddings
from model_store.text.lm import pick_device, resolve_precision
from model_store.text.lora import LoraText
from model_store.training import distributed as dist_mod
from model_store.training.prepare import Prepared, prepare
from model_store.training.report import write_training_report
from model_store.training.trainer import OnEpoch, TrainResult, fit
from model_store.training.warm import WarmStart

log = logging.getLogger(__name__)
HISTORY_KEEP = 200
UNPUBLISHED = Path("<not published>")


def catalog_embeddings(
    dataset: Dataset,
    cfg: Config,
    *,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The frozen LM's embeddings of every item text (N, T), cached on disk."""
    return text_embeddings(
        dataset.item_texts(),
        TextSpec.of_config(cfg.text),
        device=cfg.train.device,
        batch_size=cfg.text.batch_size,
        cache_dir=cache_dir,
        progress=progress,
    )


def training_manifest(
    version: str, cfg: Config, dataset: Dataset, prep: Prepared, result: TrainResult
) -> Manifest:
    model = result.model
    # the LM arithmetic the catalog's text embeddings were made with; new items are later
    # encoded the same way. LoRA's tuned embeddings are made in fp32.
    precision = (
        "fp32"
        if cfg.text.mode == "lora"
        else resolve_precision(cfg.text.precision, pick_device(cfg.train.device))
    )
    return Manifest(
        version=version,
        created_at=bundle_mod.now_iso(),
        libraries=bundle_mod.library_versions(),
        config=cfg,
        data=DataInfo(
            fingerprint=dataset.fingerprint(),
            source=str(dataset.source),
            n_users=len(prep.users),
            n_items=prep.n_items,
            n_interactions=len(dataset.interactions),
            text_columns=list(dataset.text_columns),
            holdout=cfg.train.holdout,
            last_event_timestamp=_last_timestamp(dataset),
            attributes=dict(dataset.attributes),
        ),
        dims=Dims(text=int(model.text_emb.shape[1]), model=cfg.model.dim, vector=model.out_dim),
        item_vocab_hash=bundle_mod.vocab_hash(prep.item_ids),
        text_model=TextModelInfo(
            name=cfg.text.model,
            mode=cfg.text.mode,
            max_length=cfg.text.max_length,
            precision=precision,
        ),
        metrics=TrainMetrics(
            valid=result.valid_metrics,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            batch_size=result.batch_size,
            train_seconds=result.seconds,
            seconds_to_best=result.seconds_to_best,
            seconds_per_epoch=result.seconds / result.epochs_run if result.epochs_run else 0.0,
            history=[row.as_dict() for row in result.history],
        ),
        rerank=result.rerank,
        cold=result.cold,
    )


def _last_timestamp(dataset: Dataset) -> float | None:
    stamps = dataset.interactions["timestamp"]
    return float(stamps.max()) if len(stamps) else None


@dataclass
class Trained:
    """A trained model as the bundle it becomes (not yet written), with how it was made."""

    bundle: Bundle
    result: TrainResult
    lora: LoraText | None
    prep: Prepared


def train(
    dataset: Dataset,
    cfg: Config,
    *,
    cache_dir: Path | None = None,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
    text_progress: Callable[[int], None] | None = None,
    init: WarmStart | None = None,
) -> Trained:
    """Train on ``dataset`` with ``cfg``; the result is an in-memory bundle, exactly what
    ``train_and_publish`` writes (the evaluation protocols measure it without a store)."""
    cfg = cfg.checked()
    if cfg.text.mode == "lora" and cfg.model.fusion != "joint":
        raise ConfigError("text.mode=lora tunes the LM jointly and needs fusion=joint")
    ranks = dist_mod.current()
    if ranks.distributed and cfg.text.mode == "lora":
        raise ConfigError("text.mode=lora is not supported with more than one process")
    prep = prepare(
        dataset,
        holdout=cfg.train.holdout,
        cap_events=cfg.train.shopper_cap_events,
        new_events=cfg.train.new_shopper_events,
    )
    if not ranks.main:  # rank 0 encodes (and caches) the texts, then the others read them
        dist_mod.barrier()
    prep.text_emb = catalog_embeddings(dataset, cfg, cache_dir=cache_dir, progress=text_progress)
    if ranks.main:
        dist_mod.barrier()
    lora = None
    if cfg.text.mode == "lora":
        lora = LoraText(cfg.text, dataset.item_texts(), pick_device(cfg.train.device))
    result = fit(cfg, prep, epochs=epochs, on_epoch=on_epoch, lora=lora, init=init)
    histories = {
        u: [prep.item_ids[i - 1] for i in s[-HISTORY_KEEP:]]
        for u, s in zip(prep.users, prep.sequences, strict=True)
    }
    manifest = training_manifest(store_mod.new_version_name(), cfg, dataset, prep, result)
    bundle = Bundle(
        UNPUBLISHED,
        manifest,
        result.model,
        list(prep.item_ids),
        dataset.items.copy(),
        histories,
    )
    return Trained(bundle, result, lora, prep)


def train_and_publish(
    dataset: Dataset,
    cfg: Config,
    store: Path,
    *,
    forgotten: Forgotten | None = None,
    cache_dir: Path | None = None,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
    text_progress: Callable[[int], None] | None = None,
) -> tuple[Path, TrainResult]:
    """Train on ``dataset`` with ``cfg`` and publish a new bundle version in ``store``.

    The users in ``forgotten`` (forgotten through the service; read by the caller through
    ``model_store.privacy``) are dropped from the training data first. None: a dataset no
    service has seen, nobody to drop. The published histories are keyed by user hash with
    ``forgotten``'s key (the configured secret), else the store's key file."""
    if forgotten is not None:
        kept, dropped = forgotten.drop(dataset.interactions)
        if dropped:
            log.warning("dropped %d forgotten user(s) from the training data", dropped)
            dataset = replace(dataset, interactions=kept)
    trained = train(
        dataset,
        cfg,
        cache_dir=cache_dir,
        epochs=epochs,
        on_epoch=on_epoch,
        text_progress=text_progress,
    )
    if not dist_mod.current().main:
        return UNPUBLISHED, trained.result
    b = trained.bundle
    # at rest the histories are keyed by user hash, as the service stores users
    key = forgotten.key if forgotten is not None else user_key(store)
    histories = keyed_users(b.histories, key)
    with store_mod.staging(store, b.version) as staged:
        bundle_mod.write_bundle_files(staged, b.model.cpu(), b.items, histories)
        if trained.lora is not None:
            trained.lora.save(staged)
        write_training_report(b.manifest, staged)  # report.html + training.png, hashed too
        path = bundle_mod.publish(store, staged, b.manifest)
    log.info("published %s", path)
    return path, trained.result


def reusable_current(store: Path, dataset: Dataset, cfg: Config) -> tuple[str | None, str]:
    """Whether training would only remake the store's ``CURRENT``: (its version, why) when it
    is indexed and was trained on the same data (fingerprint) with the same config, else
    (None, why not). ``make run`` trains only when this says no."""
    from model_store.errors import FusionrecError

    try:
        path = store_mod.resolve_version(store, None)
        manifest = bundle_mod.read_manifest(path)
    except FusionrecError as exc:
        return None, f"no usable CURRENT bundle ({exc})"
    if manifest.index is None:
        return None, f"CURRENT {manifest.version} has no index"
    if manifest.data.fingerprint != dataset.fingerprint():
        return None, f"the data changed since CURRENT {manifest.version} was trained"
    if _as_requested(manifest.config) != _as_requested(cfg.checked()):
        return None, f"the config differs from the one CURRENT {manifest.version} was trained with"
    why = f"CURRENT {manifest.version} is indexed and was trained on this data with this config"
    return manifest.version, why


def _as_requested(cfg: Config) -> dict[str, Any]:
    """``cfg`` without what training fits into it: ``model.cold_offset`` when the cold
    tower's calibration sets it (``train.cold_calibration``)."""
    raw = cfg.to_dict()
    if cfg.train.cold_calibration:
        raw["model"].pop("cold_offset", None)
    return raw
