"""Evaluation protocols on a leave-one-out split: warm, long tail, short histories, cold items.

Per user (canonical order): the last interaction is the **test** item, the one before it
the **valid** item, the rest **train** (users with fewer than 3 interactions stay in train).
A model is trained on train + valid (its own holdout is the valid item, for early
stopping) and measured on the same users by several protocols, each at two stages:
``valid`` (the target is the valid item, the history train — options are chosen here) and
``test`` (the target is the test item, the history train + valid — figures are reported
here). Every ranking is over the whole catalog with the history excluded.

* ``warm``  — every user.
* ``tail``  — users whose target has at most ``TAIL_MAX`` interactions in the model's
  training data (the least popular quarter of the targets on MovieLens-100k).
* ``short`` — every user, the history cut to its last ``SHORT_LEN`` items (the exclusion
  too: a shopper the service knows for three items).
* ``cold``  — a random ``fraction`` of the catalog (``cold_seed``) is removed from the
  training interactions and from the item table before training; after training those items
  are added through ``model_store.catalog.changes`` — the path of ``POST /v1/items`` — and the users
  whose target is one of them are ranked over the whole catalog, warm and cold together.
  ``cold_share`` is the fraction of all users' top-20 slots that cold items take.

The results are per-user ranks (:class:`UserRanks`), so two models can be compared on the
same users (``model_store.evaluation.stats``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from model_store.bundle.io import Bundle, load_bundle
from model_store.catalog.changes import apply_to_bundle, prepare_change
from model_store.data.dataset import Dataset, load_dataset, read_table
from model_store.data.splits import leave_one_out, test_rows
from model_store.errors import ConfigError, DataError
from model_store.model.scoring import EvalSet, evaluate, metrics_from_ranks, rank_targets

Stage = Literal["valid", "test"]
Protocol = Literal["warm", "tail", "short", "cold"]
PROTOCOLS: tuple[Protocol, ...] = ("warm", "tail", "short", "cold")
TAIL_MAX = 50
SHORT_LEN = 3
SHARE_K = 20


@dataclass(frozen=True)
class Split:
    """A dataset split leave-one-out, with the interactions of each part."""

    dataset: Dataset
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    is_test: np.ndarray  # over dataset.interactions: the rows that are test items

    @classmethod
    def of(cls, dataset: Dataset) -> Split:
        train, valid, test = leave_one_out(dataset.interactions)
        return cls(dataset, train, valid, test, test_rows(dataset.interactions))

    def training_data(self, *, without: frozenset[str] = frozenset()) -> Dataset:
        """train + valid in canonical order (the model's training data), optionally
        without some items (their interactions and their catalog rows)."""
        ds = self.dataset
        fit = ds.interactions[~self.is_test].reset_index(drop=True)
        return without_items(dataclasses.replace(ds, interactions=fit), without)


def cold_items(dataset: Dataset, fraction: float, seed: int) -> frozenset[str]:
    """The random ``fraction`` of the catalog held out of training (fixed by ``seed``)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--cold-items {fraction}: the fraction must be in (0, 1)")
    ids = dataset.items["item_id"].astype(str).to_numpy()
    n = max(1, round(fraction * len(ids)))
    rng = np.random.default_rng(seed)
    return frozenset(ids[np.sort(rng.choice(len(ids), n, replace=False))].tolist())


def without_items(dataset: Dataset, items: frozenset[str]) -> Dataset:
    """``dataset`` without ``items``: neither their interactions nor their catalog rows."""
    inter = dataset.interactions
    inter = inter[~inter["item_id"].isin(items)].reset_index(drop=True)
    kept = dataset.items[~dataset.items["item_id"].isin(items)].reset_index(drop=True)
    return dataclasses.replace(dataset, interactions=inter, items=kept)


def add_cold_items(bundle: Bundle, dataset: Dataset, cold: frozenset[str]) -> None:
    """Add the held-out items to a trained bundle by their text, as ``POST /v1/items`` does."""
    items = dataset.items[dataset.items["item_id"].isin(cold)]
    records = [
        {str(k): str(v) for k, v in row.items() if not pd.isna(v) and str(v).strip()}
        for row in items.to_dict("records")
    ]
    apply_to_bundle(bundle, prepare_change(bundle, records, device=str(_device(bundle))))


def _device(bundle: Bundle) -> str:
    return bundle.model.text_emb.device.type


@dataclass
class UserRanks:
    """0-based rank of each user's target (inf = not ranked), users in split order."""

    users: list[str]
    ranks: np.ndarray
    top: np.ndarray | None = None  # (U, SHARE_K) item indices, for the cold share

    def metrics(self, n_items: int = 0) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, None, n_items)

    def subset(self, keep: np.ndarray) -> UserRanks:
        top = None if self.top is None else self.top[keep]
        return UserRanks(
            [u for u, k in zip(self.users, keep, strict=True) if k], self.ranks[keep], top
        )


@dataclass
class Measured:
    """A model's per-user ranks by protocol and stage, with the cold share when measured."""

    ranks: dict[tuple[Protocol, Stage], UserRanks] = field(default_factory=dict)
    cold_share: dict[Stage, float] = field(default_factory=dict)
    cold_fraction: float = 0.0


def _histories(
    bundle: Bundle, parts: list[pd.DataFrame], targets: pd.DataFrame, *, cut: int | None = None
) -> tuple[list[str], EvalSet]:
    """(users, their EvalSet) for ``targets``: the history of each target's user is its
    interactions in ``parts`` that the catalog knows, oldest first."""
    index = bundle.index_of()
    seqs: dict[str, list[int]] = {}
    for part in parts:
        for u, i in zip(part["user_id"], part["item_id"], strict=True):
            k = index.get(i)
            if k is not None:
                seqs.setdefault(u, []).append(k)
    users, hists, tgts = [], [], []
    for u, i in zip(targets["user_id"], targets["item_id"], strict=True):
        h = seqs.get(u, [])
        if not h or i not in index:
            continue
        users.append(u)
        hists.append(h[-cut:] if cut else h)
        tgts.append(index[i])
    return users, EvalSet(hists, tgts)


def _ranked(bundle: Bundle, users: list[str], data: EvalSet, *, top: bool = False) -> UserRanks:
    if not users:
        return UserRanks([], np.zeros(0))
    ranks, top_items = rank_targets(bundle.model, data, top_k=SHARE_K if top else 10)
    return UserRanks(users, ranks, top_items if top else None)


def _stage_parts(split: Split, stage: Stage) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    if stage == "valid":
        return [split.train], split.valid
    return [split.train, split.valid], split.test


def measure_warm(bundle: Bundle, split: Split) -> Measured:
    """warm, tail and short on a model trained on the whole training data."""
    out = Measured()
    for stage in ("valid", "test"):
        parts, targets = _stage_parts(split, stage)
        users, data = _histories(bundle, parts, targets)
        warm = _ranked(bundle, users, data)
        out.ranks[("warm", stage)] = warm
        counts = pd.concat(parts)["item_id"].value_counts()
        target_ids = dict(zip(targets["user_id"], targets["item_id"], strict=True))
        n = np.array([int(counts.get(target_ids[u], 0)) for u in users])
        out.ranks[("tail", stage)] = warm.subset(n <= TAIL_MAX)
        users_s, data_s = _histories(bundle, parts, targets, cut=SHORT_LEN)
        out.ranks[("short", stage)] = _ranked(bundle, users_s, data_s)
    return out


def measure_cold(trained: Bundle, split: Split, cold: frozenset[str]) -> Measured:
    """cold on a model trained without the ``cold`` items (added, to a copy, through the
    catalog path), with the cold share of every user's top 20 and the warm users of the same
    model."""
    bundle = dataclasses.replace(
        trained,
        model=copy.deepcopy(trained.model),
        item_ids=list(trained.item_ids),
        items=trained.items.copy(),
    )
    add_cold_items(bundle, split.dataset, cold)
    index = bundle.index_of()
    cold_idx = np.array(sorted(index[i] for i in cold if i in index))
    out = Measured(cold_fraction=len(cold_idx) / len(bundle.item_ids))
    for stage in ("valid", "test"):
        parts, targets = _stage_parts(split, stage)
        users, data = _histories(bundle, parts, targets)
        ranked = _ranked(bundle, users, data, top=True)
        is_cold = np.isin(np.asarray(data.targets), cold_idx)
        out.ranks[("cold", stage)] = ranked.subset(is_cold)
        out.ranks[("warm", stage)] = ranked.subset(~is_cold)
        assert ranked.top is not None
        out.cold_share[stage] = share_of(ranked.top, cold_idx)
    return out


def share_of(top: np.ndarray, items: np.ndarray) -> float:
    """The fraction of the filled slots of ``top`` (U, K) item indices (0 = empty) taken by
    ``items``."""
    slots = top[top > 0]
    return float(np.isin(slots, items).mean()) if len(slots) else 0.0


@dataclass
class HeldOutTargets:
    """The rows of a test file a bundle can rank: each user's history in DATA and target."""

    data: EvalSet
    skipped: int  # users without any history in DATA
    unknown_history: int  # distinct history items the catalog lacks
    path: Path


def evaluate_bundle(
    *,
    store: Path,
    data: Path,
    test: Path,
    version: str | None = None,
    cold_fraction: float = 0.0,
    cold_seed: int = 0,
) -> dict[str, Any]:
    """``fusionrec evaluate``: targets from ``test``, histories = all of DATA's interactions.

    With ``cold_fraction`` the bundle must have been trained with the same items held out
    (``fusionrec train --cold-items``): they are added through the catalog path first, and
    the report splits the users by warm and cold target, with the cold share of top 20s.
    """
    bundle = load_bundle(store, version)
    dataset = load_dataset(data, text_columns=bundle.text_columns)
    cold: frozenset[str] = frozenset()
    if cold_fraction > 0:
        cold = cold_items(dataset, cold_fraction, cold_seed)
        _check_held_out(bundle, cold, cold_fraction, cold_seed)
        add_cold_items(bundle, dataset, cold)
    targets = read_targets(bundle, dataset, test, data)
    warm = [False, *bundle.model.has_id[1:].tolist()]
    metrics = evaluate(bundle.model, targets.data, warm_items=warm)
    extra: dict[str, Any] = {}
    if cold:
        top = rank_targets(bundle.model, targets.data, top_k=SHARE_K)[1]
        index = bundle.index_of()
        cold_idx = np.array(sorted(index[i] for i in cold))
        extra = {
            "cold_items": len(cold),
            "cold_fraction": len(cold) / len(bundle.item_ids),
            "cold_share_of_top20": share_of(top, cold_idx),
        }
    return {
        **extra,
        "version": bundle.version,
        "metrics": metrics,
        "skipped_users": targets.skipped,
        "history_items_not_in_catalog": targets.unknown_history,
        "test_file": str(targets.path),
        "rerank": bool(bundle.model.use_head),
    }


def _check_held_out(bundle: Bundle, cold: frozenset[str], fraction: float, seed: int) -> None:
    """The items ``--cold-items`` holds out must be absent from the bundle's catalog."""
    known = sorted(cold & set(bundle.item_ids))
    if known:
        raise DataError(
            f"{len(known)} of the {len(cold)} items held out by --cold-items "
            f"{fraction:g} --cold-seed {seed} are in bundle {bundle.version}'s "
            f"catalog (e.g. {known[:3]}): train it with the same --cold-items and "
            "--cold-seed"
        )


def read_targets(bundle: Bundle, dataset: Dataset, test: Path, data: Path) -> HeldOutTargets:
    """The (user_id, item_id) rows of ``test`` with each user's history in ``dataset``; an
    item the catalog lacks is an error, a user without history is skipped."""
    frame, path = (
        read_table(test.with_suffix("")) if test.suffix in (".csv", ".parquet") else (None, test)
    )
    if frame is None:
        raise DataError(f"{test}: the test file must end in .csv or .parquet")
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    index = bundle.index_of()
    seqs = dataset.sequences()
    hists: list[list[int]] = []
    targets: list[int] = []
    skipped = 0
    unknown_hist: set[str] = set()
    for row, (user, item) in enumerate(
        zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True)
    ):
        if item not in index:
            raise DataError(
                f"{path}: row {row + 1}, field 'item_id': item {item!r} is not in "
                f"the bundle's catalog of {len(index)} items"
            )
        history = [index[i] for i in seqs.get(user, []) if i in index]
        unknown_hist.update(i for i in seqs.get(user, []) if i not in index)
        if not history:
            skipped += 1
            continue
        hists.append(history)
        targets.append(index[item])
    if not targets:
        raise DataError(f"{path}: no test user has a history in {data}")
    return HeldOutTargets(EvalSet(hists, targets), skipped, len(unknown_hist), path)
