"""Retraining from the event log, published only through a quality gate.

``retrain`` builds a dataset from the log (positive events, weighted by type) and the
store's CURRENT catalog (upserted items included), then:

1. **Time-based holdout.** The most recent ``holdout`` fraction of the events (by
   timestamp) is set aside, but never an event at or before CURRENT's training data cut
   (``data.last_event_timestamp`` in its manifest: CURRENT has seen those, which would
   favour it; a bundle without it, made by older code, keeps the plain rule, logged); each
   user with events on both sides of the cut contributes one target — their first event
   after it — with their events before it as history. When none has (every recent shopper
   is new: a log without its imported history), the newest users' last events after
   CURRENT's cut are held out instead, their earlier events as history.
2. **Candidate.** A model is trained on the events before the cut (the usual per-user
   validation item inside them decides its epochs), warm-started from CURRENT's weights
   when its architecture is the configured one (new items grow the ID table), else, or
   with ``warm=False`` (``--from-scratch``), from scratch. The log holds the imported
   history (``fusionrec events import``) and the new events, so both are trained on.
3. **Gate.** The candidate and CURRENT rank the same targets over their whole catalogs
   (history excluded); a target CURRENT's catalog lacks counts as a miss for it. The
   candidate passes when its mean NDCG@10 is at most ``margin`` (0.005) below CURRENT's;
   the paired bootstrap interval of the difference is recorded beside it.
4. **Publish.** On a pass, the model is retrained on every event (``final``; or the
   candidate itself is used), indexed, and only then made CURRENT, provided CURRENT did not
   move meanwhile. The gate's figures go into the manifest (``gate``); every decision, pass
   or refusal, is appended to ``retrain.jsonl`` in the store and logged. A crash at any
   point leaves CURRENT as it was: nothing is made current before it is complete.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.bundle.io import Bundle, load_bundle, read_items
from model_store.bundle.manifest import GateInfo, Manifest
from model_store.config import Config
from model_store.data.dataset import Dataset, load_dataset
from model_store.database import redact
from model_store.errors import BundleError, DataError
from model_store.evaluation.stats import Paired, paired_bootstrap, per_user
from model_store.events.log import EventStore, training_interactions
from model_store.model.scoring import EvalSet, rank_targets
from model_store.privacy.forgotten import Forgotten
from model_store.training.pipeline import Trained, train
from model_store.training.warm import WarmStart

log = logging.getLogger("fusionrec.retrain")

DECISIONS = "retrain.jsonl"
MARGIN = 0.005


@dataclass
class Holdout:
    """The time-based holdout: a cut timestamp and one (user, history, target) per user."""

    cut: float
    users: list[str]
    histories: list[list[str]]
    targets: list[str]


@dataclass
class Decision:
    published: bool
    reason: str
    current_version: str | None
    version: str | None
    gate: GateInfo | None
    events: int
    seconds: float
    start: str = "scratch"  # "warm" (from CURRENT's weights) or "scratch: why"


def time_holdout(
    interactions: pd.DataFrame, fraction: float, after: float | None = None
) -> tuple[pd.DataFrame, Holdout]:
    """(interactions before the cut, the holdout targets after it); with ``after`` (CURRENT's
    training data cut) no event at or before it is held out. When no user has events on
    both sides of the cut (the newest shoppers are all new), the newest users' last events
    are held out instead (:func:`last_event_holdout`)."""
    before, held = _cut_holdout(interactions, fraction, after)
    if held.users:
        return before, held
    return last_event_holdout(interactions, fraction, after)


def last_event_holdout(
    interactions: pd.DataFrame, fraction: float, after: float | None = None
) -> tuple[pd.DataFrame, Holdout]:
    """The fallback holdout: each of the users with two or more events whose last event is
    among the newest ``fraction`` of such users (and after ``after``) contributes that last
    event as target and the rest as history; the training set is everything but those."""
    counts = interactions.groupby("user_id", sort=False)["item_id"].transform("size")
    last = interactions[counts >= 2].drop_duplicates("user_id", keep="last")
    if after is not None:
        last = last[last["timestamp"] > after]
    last = last.sort_values("timestamp", kind="stable")
    last = last.iloc[len(last) - max(1, round(len(last) * fraction)) :] if len(last) else last
    before = interactions.drop(index=last.index)
    seen: dict[str, list[str]] = {}
    for u, i in zip(before["user_id"], before["item_id"], strict=True):
        seen.setdefault(u, []).append(i)
    users = [str(u) for u in last["user_id"]]
    cut = float(last["timestamp"].min()) if len(last) else float("inf")
    return before, Holdout(cut, users, [seen[u] for u in users], [str(i) for i in last["item_id"]])


def _cut_holdout(
    interactions: pd.DataFrame, fraction: float, after: float | None
) -> tuple[pd.DataFrame, Holdout]:
    cut = float(np.quantile(interactions["timestamp"].to_numpy(), 1.0 - fraction))
    if after is not None:  # the first timestamp after ``after``: nothing at it is held out
        cut = max(cut, float(np.nextafter(after, np.inf)))
    before = interactions[interactions["timestamp"] < cut]
    held = interactions[interactions["timestamp"] >= cut]
    seen: dict[str, list[str]] = {}
    for u, i in zip(before["user_id"], before["item_id"], strict=True):
        seen.setdefault(u, []).append(i)
    first_after = held.drop_duplicates("user_id", keep="first")
    users, hists, targets = [], [], []
    for u, i in zip(first_after["user_id"], first_after["item_id"], strict=True):
        if u in seen:
            users.append(u)
            hists.append(seen[u])
            targets.append(i)
    return before, Holdout(cut, users, hists, targets)


def per_user_ndcg(bundle: Bundle, holdout: Holdout) -> np.ndarray:
    """NDCG@10 of each holdout target under ``bundle`` (0 when the catalog lacks it)."""
    index = bundle.index_of()
    rows, hists, targets = [], [], []
    for r, (h, t) in enumerate(zip(holdout.histories, holdout.targets, strict=True)):
        known = [index[i] for i in h if i in index]
        if known and t in index:
            rows.append(r)
            hists.append(known)
            targets.append(index[t])
    ranks = np.full(len(holdout.users), np.inf)
    if rows:
        got, _ = rank_targets(bundle.model, EvalSet(hists, targets))
        ranks[np.asarray(rows)] = got
    return per_user(ranks, "ndcg@10")


def _dataset(interactions: pd.DataFrame, items: pd.DataFrame, work: Path, name: str) -> Dataset:
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_csv(out / "interactions.csv", index=False)
    items.to_csv(out / "items.csv", index=False)
    return load_dataset(out)


def _record(store: Path, decision: Decision) -> None:
    row = asdict(decision)
    row["gate"] = None if decision.gate is None else decision.gate.model_dump()
    row["at"] = time.time()
    with open(store / DECISIONS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    log.warning(
        "retrain: %s (%s); candidate %s, CURRENT %s",
        "published" if decision.published else "refused",
        decision.reason,
        decision.version,
        decision.current_version,
    )


def _publish(store: Path, trained: Trained, gate: GateInfo, expect: str | None) -> str:
    """Write, index, then make CURRENT — only if CURRENT is still ``expect``."""
    from indexer.publish import index_bundle

    b = trained.bundle
    manifest = b.manifest.model_copy(update={"gate": gate})
    with store_mod.staging(store, b.version) as staged:
        bundle_mod.write_bundle_files(staged, b.model.cpu(), b.items, b.histories)
        if trained.lora is not None:
            trained.lora.save(staged)
        bundle_mod.publish(store, staged, manifest, make_current=False)
    indexed = index_bundle(store, version=b.version, make_current=False)
    now = _current(store)
    if now != expect:
        raise BundleError(
            f"CURRENT moved from {expect} to {now} while retraining; {indexed.name} was "
            "published but not made current"
        )
    store_mod.set_current(store, indexed.name)
    return indexed.name


def retrain_config(store: Path, overrides: dict[str, object] | None = None) -> Config:
    """The config a retrain uses: CURRENT's own (the same recipe and architecture, so the
    candidate can start from its weights), with ``overrides`` (a config file's sections,
    key by key) on top; the defaults when the store has no CURRENT yet."""
    version = _current(store)
    base = (
        bundle_mod.read_manifest(store / version).config.to_dict()
        if version is not None
        else Config().to_dict()
    )
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return Config.from_dict(base, source="CURRENT's config with the config file on top")


def _current(store: Path) -> str | None:
    try:
        return store_mod.current_version(store)
    except BundleError:
        return None


def retrain(
    store: Path,
    events_url: str,
    cfg: Config,
    *,
    holdout: float = 0.1,
    margin: float = MARGIN,
    final: bool = True,
    cache_dir: Path | None = None,
    forgotten: Forgotten | None = None,
    warm: bool = True,
) -> Decision:
    """One retraining round (module docstring); ``forgotten`` (read by the caller through
    ``model_store.privacy``) are left out of the events, whatever the log still holds.
    With ``warm`` both trainings start from CURRENT's weights when its architecture is
    ``cfg``'s (new items grow the ID table; :mod:`model_store.training.warm`)."""
    t0 = time.perf_counter()
    expect = _current(store)
    if expect is None:
        raise BundleError(
            f"{store} has no CURRENT bundle: train one first (`fusionrec train`); retrain "
            "adds the event log to its catalog"
        )
    # the data's snapshot: the forgotten users (read first, by the caller) and the log
    snapshot = min(time.time(), forgotten.read_at if forgotten is not None else np.inf)
    items = read_items(store)
    events = _usable_events(_logged_interactions(events_url, forgotten), items, events_url)
    current = load_bundle(store, expect)
    after = holdout_start(current.manifest)
    before, held = _holdout(events, holdout, after)
    init, start = _warm_start(current, cfg, warm)
    with tempfile.TemporaryDirectory(prefix="fusionrec-retrain-") as tmp:
        work = Path(tmp)
        before_set = _dataset(before, items, work, "before")
        candidate = train(before_set, cfg, cache_dir=cache_dir, init=init)
        gate, diff = _gate(
            candidate.bundle, current, held, margin=margin, fraction=holdout, events=len(events)
        )
        gate = gate.model_copy(update={"current_data_cut": after, "snapshot_at": snapshot})
        version = None
        if gate.decision == "published":
            published = (
                train(_dataset(events, items, work, "all"), cfg, cache_dir=cache_dir, init=init)
                if final
                else candidate
            )
            version = _publish(store, published, gate, expect)
    reason = (
        f"candidate NDCG@10 {gate.candidate:.4f} vs CURRENT {gate.current:.4f} "
        f"(difference {diff}; refused below -{margin})"
    )
    passed = gate.decision == "published"
    decision = Decision(
        passed, reason, expect, version, gate, len(events), time.perf_counter() - t0, start
    )
    _record(store, decision)
    return decision


def _holdout(
    events: pd.DataFrame, fraction: float, after: float | None
) -> tuple[pd.DataFrame, Holdout]:
    before, held = time_holdout(events, fraction, after)
    if not held.users:
        since = "" if after is None else " after CURRENT's training data cut"
        raise DataError(
            f"no user has two or more events, one of them{since}, to hold one out; collect "
            "more events (or import the history: `fusionrec events import`)"
        )
    return before, held


def holdout_start(current: Manifest) -> float | None:
    """CURRENT's training data cut, after which the gate's holdout starts; None (the plain
    newest-fraction rule, noted in the log) for a bundle made before it was recorded."""
    cut = current.data.last_event_timestamp
    if cut is None:
        log.warning(
            "retrain: CURRENT %s records no training data cut (made by older code): the "
            "holdout is the newest events and may include some CURRENT was trained on",
            current.version,
        )
    return cut


# what the weights' shapes depend on (training may calibrate other model fields)
_ARCHITECTURE = ("fusion", "dim", "max_len", "n_layers", "n_heads", "cold_tower")


def _warm_start(current: Bundle, cfg: Config, warm: bool) -> tuple[WarmStart | None, str]:
    """CURRENT's weights to start from, or None and why training starts from scratch."""
    if not warm:
        return None, "scratch: --from-scratch"
    have, want = current.manifest.config.model, cfg.checked().model
    differ = [f for f in _ARCHITECTURE if getattr(have, f) != getattr(want, f)]
    if differ:
        return None, f"scratch: CURRENT's model differs in {', '.join(differ)}"
    return WarmStart(current.model, list(current.item_ids)), "warm"


def _logged_interactions(events_url: str, forgotten: Forgotten | None) -> pd.DataFrame:
    """The log's positive events as weighted interactions, forgotten users left out."""
    log_store = EventStore(events_url)
    try:
        logged = training_interactions(log_store.frame())
    finally:
        log_store.close()
    return logged if forgotten is None else forgotten.drop(logged)[0]


def _usable_events(events: pd.DataFrame, items: pd.DataFrame, events_url: str) -> pd.DataFrame:
    """The events of items in the catalog, oldest first; DataError when too few are left."""
    events = events[events["item_id"].isin(set(items["item_id"]))]
    if len(events) < 10:
        raise DataError(
            f"the event log {redact(events_url)} holds {len(events)} usable events "
            "(positive, of items in the catalog); too few to retrain"
        )
    return events.sort_values("timestamp", kind="stable")


def _gate(
    candidate: Bundle,
    current: Bundle,
    held: Holdout,
    *,
    margin: float,
    fraction: float,
    events: int,
) -> tuple[GateInfo, Paired]:
    """Both models on the same holdout targets: pass when the candidate's mean NDCG@10 is
    at most ``margin`` below CURRENT's → (the gate's record, the paired difference)."""
    cand_u = per_user_ndcg(candidate, held)
    curr_u = per_user_ndcg(current, held)
    diff = paired_bootstrap(cand_u, curr_u)
    gate = GateInfo(
        decision="published" if bool(diff.mean >= -margin) else "refused",
        metric="ndcg@10",
        margin=margin,
        candidate=float(cand_u.mean()),
        current=float(curr_u.mean()),
        diff_mean=diff.mean,
        diff_lo=diff.lo,
        diff_hi=diff.hi,
        users=len(held.users),
        cut_timestamp=held.cut,
        holdout_fraction=fraction,
        compared_with=current.version,
        events=events,
    )
    return gate, diff
