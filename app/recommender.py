"""The serving core the routes call: one snapshot at a time, micro-batched model work.

Nothing here knows HTTP: routes call the keyword-only coroutines ``recommend``, ``search``,
``upsert_items``, ``item``, ``add_event``, ``forget_user`` and ``reload``, which raise the
domain errors of ``model_store.errors``.

**Recommend.** history (request > stored > bundle's training history) → user vector (cache
keyed by model version + user id hash or history hash; on a miss encoded in the
micro-batch) → retrieval, rerank, top-k (``inference.ModelWork``). No usable history → cold
start: items by training popularity, flagged.

**Search.** The query is encoded by the bundle's own text model and ranked by cosine; with
a user the retrieval score reorders the candidates (``ranking.blend``, β =
``FUSIONREC_SEARCH_USER_WEIGHT``).

**Upsert.** ``indexer.catalog``: validated, encoded through the text path outside any lock,
applied to the live model and index under the model lock, published as a new CURRENT
bundle version (``indexer.publish.persist_update``) so a restart keeps it; if publishing
fails the change is undone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from app.batching import MicroBatcher
from app.errors import hide_paths
from app.event_log import EventLogWriter
from app.history import HistoryStore
from app.inference import ModelWork, RecJob, RecOut, Scored, SearchJob
from app.keys import negative_key, user_hash, user_vector_key, vector_key
from app.metrics import Metrics
from app.ranking import popular
from app.snapshot import Snapshot, build_snapshot, freeze_heap
from app.tombstones import FileTombstones, Tombstones
from app.updates import apply_and_publish
from app.vector_cache import VectorCache
from model_store import private
from model_store import store as store_mod
from model_store.bundle import load_bundle
from model_store.catalog import Change, encode_items, validate_items
from model_store.errors import (
    BundleError,
    DependencyError,
    FusionrecError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    ReloadRefusedError,
)
from model_store.events import DEFAULT_EVENT_TYPES, DEFAULT_TYPE, Event

log = logging.getLogger("app.recommender")
Strategy = Literal["personalized", "cold_start"]


@dataclass
class Answer:
    model_version: str
    strategy: Strategy
    items: list[Scored]
    unknown_items: list[str]


@dataclass
class UpsertResult:
    model_version: str
    added: list[str]
    updated: list[str]


@dataclass
class ReloadResult:
    model_version: str
    previous_version: str | None
    reloaded: bool


class Recommender:
    """Serves one snapshot at a time; see the module docstring for the request paths."""

    def __init__(
        self,
        *,
        store: Path,
        cache: VectorCache,
        history: HistoryStore,
        metrics: Metrics,
        device: str = "auto",
        candidates: int = 200,
        batch_max_size: int = 64,
        batch_max_wait_ms: float = 0.0,
        search_user_weight: float = 0.3,
        event_log: EventLogWriter | None = None,
        event_types: Mapping[str, float] | None = None,
        tombstones: Tombstones | None = None,
        user_key: bytes | None = None,
    ) -> None:
        self.store = store
        self.event_log = event_log
        self.event_types = dict(DEFAULT_EVENT_TYPES if event_types is None else event_types)
        self.cache = cache
        self.history = history
        # user ids are hashed with the store's (or the configured) key; forgets are durable
        self.user_key = user_key if user_key is not None else private.user_key(store)
        self.tombstones: Tombstones = (
            tombstones if tombstones is not None else FileTombstones(store)
        )
        self.metrics = metrics
        self.device = (
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        # metric children bound once (labels() is a dict lookup under a lock per call)
        self._cache_hits = metrics.cache.labels("hit")
        self._cache_misses = metrics.cache.labels("miss")
        self._cold_starts = metrics.strategy.labels("recommend", "cold_start")
        self._personalized = metrics.strategy.labels("recommend", "personalized")
        self.snapshot: Snapshot | None = None
        self.load_error: str | None = None
        self.versions_served: list[str] = []
        # called with the new version after this process published one (app.follow)
        self.on_publish: Callable[[str], Awaitable[None]] | None = None
        # held by the workers while they compute and by upserts while they mutate
        self._model_lock = threading.Lock()
        self._admin_lock = asyncio.Lock()
        self.work = ModelWork(
            lock=self._model_lock, candidates=candidates, search_user_weight=search_user_weight
        )
        wait = batch_max_wait_ms / 1000.0
        self._rec = MicroBatcher[RecJob, RecOut](
            "recommend",
            self.work.recommend_batch,
            max_size=batch_max_size,
            max_wait_s=wait,
            on_batch=lambda n: metrics.batch_size.labels("user").observe(n),
        )
        self._text = MicroBatcher[SearchJob, list[Scored]](
            "search",
            self.work.search_batch,
            max_size=batch_max_size,
            max_wait_s=wait,
            on_batch=lambda n: metrics.batch_size.labels("query").observe(n),
        )

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load CURRENT (errors are kept for /readyz, not raised) and start the workers."""
        self._rec.start()
        self._text.start()
        try:
            self._install(self._load(None))
        except FusionrecError as exc:
            self.load_error = str(exc)
            log.error("no bundle loaded: %s", exc)

    def stop(self) -> None:
        self._rec.stop()
        self._text.stop()

    def _load(self, version: str | None) -> Snapshot:
        return build_snapshot(
            load_bundle(self.store, version, device=self.device), device=self.device
        )

    def _install(self, snap: Snapshot, *, full_gc: bool = True) -> None:
        self.snapshot = snap
        self.load_error = None
        freeze_heap(full=full_gc)
        if snap.version not in self.versions_served:
            self.versions_served.append(snap.version)
        self.metrics.model.info(
            {"version": snap.version, "index": snap.index_source, "index_kind": snap.index.kind}
        )
        self.metrics.index_size.set(snap.index.ntotal)
        self.metrics.catalog_size.set(snap.n_items)

    def ready(self) -> Snapshot:
        snap = self.snapshot
        if snap is None:
            raise NotReadyError(
                f"no bundle is loaded: {self.load_error or 'starting'}; "
                "publish one and POST /admin/reload"
            )
        return snap

    async def reload(self) -> ReloadResult:
        """Swap to the store's CURRENT bundle; a broken one is refused, the old keeps serving."""
        async with self._admin_lock:
            old = self.snapshot
            name = "?"
            try:
                name = store_mod.current_version(self.store)
                if old is not None and name == old.version:
                    return ReloadResult(name, name, False)
                snap = await asyncio.to_thread(self._load, name)
            except BundleError as exc:
                self.metrics.reloads.labels("refused").inc()
                self.metrics.reload_refused.info(
                    {
                        "version": name,
                        "error": type(exc).__name__,
                        "reason": hide_paths(str(exc), (self.store,))[:500],
                    }
                )
                keeps = f"; still serving {old.version}" if old else ""
                log.error("reload of %s refused: %s%s", name, exc, keeps)
                raise ReloadRefusedError(f"bundle refused: {exc}{keeps}") from exc
            self._install(snap)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving %s (was %s)", snap.version, old.version if old else None)
            return ReloadResult(snap.version, old.version if old else None, True)

    # ---- history ------------------------------------------------------------------------------
    def uhash(self, user_id: str) -> str:
        return user_hash(user_id, self.user_key)

    async def _bundle_history(self, snap: Snapshot, user_id: str, uhash: str) -> list[str]:
        """The bundle's training history of the user, unless the user was forgotten: keyed by
        the raw id in a bundle trained on a dataset, by the user key in one retrained from the
        event log (which stores keys only)."""
        histories = snap.bundle.histories
        trained = histories.get(user_id) or histories.get(uhash)
        if not trained or await self.tombstones.contains(uhash):
            return []
        return trained

    async def _stored_history(self, snap: Snapshot, user_id: str, uhash: str) -> list[str]:
        stored = await self.history.get(uhash)
        if stored is not None:
            return stored
        return await self._bundle_history(snap, user_id, uhash)

    def _resolve(
        self, snap: Snapshot, ids: Sequence[str], *, report: bool, unknown: list[str]
    ) -> list[int]:
        if not report and not snap.index.removed:  # the common case, on every request
            return [r for r in map(snap.row_of.get, ids) if r is not None]
        rows: list[int] = []
        for item in ids:
            row = snap.live(item)
            if row is None:
                if report and item not in unknown:
                    unknown.append(item)
            else:
                rows.append(row)
        return rows

    async def _history_rows(
        self,
        snap: Snapshot,
        user_id: str | None,
        history: Sequence[str] | None,
        unknown: list[str],
    ) -> tuple[list[int], str | None]:
        """Catalog rows of the effective history and the user-vector cache key."""
        max_len = snap.bundle.config.model.max_len
        if history is not None:
            rows = self._resolve(snap, history, report=True, unknown=unknown)
            known = [snap.bundle.item_ids[r] for r in rows[-max_len:]]
            return rows, vector_key(snap.version, history=known) if rows else None
        if user_id is not None:
            uhash = self.uhash(user_id)
            stored = await self._stored_history(snap, user_id, uhash)
            rows = self._resolve(snap, stored, report=False, unknown=unknown)
            return rows, user_vector_key(uhash) if rows else None
        return [], None

    async def _user_vector(self, snap: Snapshot, key: str | None) -> tuple[np.ndarray | None, bool]:
        """(cached vector or None, whether it was a hit)."""
        if key is None:
            return None, False
        vec = await self.cache.get(key, tag=snap.version)
        if vec is not None and vec.shape[0] == snap.item_vecs.shape[1]:
            self._cache_hits.inc()
            return vec, True
        self._cache_misses.inc()
        return None, False

    # ---- recommend and search -----------------------------------------------------------------
    async def recommend(
        self,
        *,
        user_id: str | None,
        history: Sequence[str] | None,
        k: int,
        exclude: Sequence[str] = (),
        exclude_history: bool = True,
        explain: bool = False,
    ) -> Answer:
        snap = self.ready()
        unknown: list[str] = []
        rows, key = await self._history_rows(snap, user_id, history, unknown)
        excluded = set(self._resolve(snap, exclude, report=True, unknown=unknown))
        if exclude_history:
            excluded.update(rows)
        if user_id is not None:
            disliked = await self.history.get(negative_key(self.uhash(user_id)))
            if disliked:
                excluded.update(self._resolve(snap, disliked, report=False, unknown=unknown))
        if not rows:
            self._cold_starts.inc()
            items = [
                Scored(snap.bundle.item_ids[r], s)
                for r, s in popular(snap.popular, snap.popular_scores, k, excluded)
            ]
            return Answer(snap.version, "cold_start", items, unknown)
        vec, hit = await self._user_vector(snap, key)
        out = await self._rec.submit(RecJob(snap, rows, vec, excluded, k, explain))
        if not hit and key is not None:
            await self.cache.set(key, out.vector, tag=snap.version)
        self._personalized.inc()
        return Answer(snap.version, "personalized", out.items, unknown)

    async def search(
        self, *, query: str, user_id: str | None, history: Sequence[str] | None, k: int
    ) -> Answer:
        snap = self.ready()
        if snap.text is None:
            raise NotReadyError(f"search is unavailable: {snap.text_error}")
        unknown: list[str] = []
        rows, key = await self._history_rows(snap, user_id, history, unknown)
        vec: np.ndarray | None = None
        if rows:
            vec, _ = await self._user_vector(snap, key)
            if vec is None:
                vec = (await self._rec.submit(RecJob(snap, rows, None, set(), 0, False))).vector
                if key is not None:
                    await self.cache.set(key, vec, tag=snap.version)
        items = await self._text.submit(SearchJob(snap, query, vec, k))
        strategy: Strategy = "personalized" if vec is not None else "cold_start"
        self.metrics.strategy.labels("search", strategy).inc()
        return Answer(snap.version, strategy, items, unknown)

    # ---- items --------------------------------------------------------------------------------
    def item(self, *, item_id: str) -> tuple[str, dict[str, Any], bool]:
        """(model version, the item's text fields, whether it has a trained ID embedding)."""
        snap = self.ready()
        row = snap.live(item_id)
        if row is None:
            raise NotFoundError(
                f"item {item_id!r} is not in the catalog of model version {snap.version}"
            )
        record = snap.bundle.items.iloc[row].to_dict()
        fields = {
            c: (None if pd.isna(v) else v)
            for c, v in record.items()
            if c != "item_id" and c in snap.bundle.text_columns
        }
        return snap.version, fields, bool(snap.bundle.model.has_id[row + 1])

    async def upsert_items(self, *, items: Sequence[Mapping[str, Any]]) -> UpsertResult:
        """Add or edit items; live at once, persisted as a new CURRENT bundle version."""
        async with self._admin_lock:
            snap = self.ready()
            if snap.text is None:
                raise NotReadyError(f"item upserts are unavailable: {snap.text_error}")
            records = validate_items(snap.bundle, items)
            emb = await asyncio.to_thread(
                encode_items, snap.bundle, records, device=self.device
            )  # the LM work, outside the model lock
            change = Change(records, emb)
            new_snap, applied = await asyncio.to_thread(
                apply_and_publish, snap, change, store=self.store, lock=self._model_lock
            )
            self._install(new_snap, full_gc=False)
        if self.on_publish is not None:
            await self.on_publish(new_snap.version)
        return UpsertResult(new_snap.version, applied.added, applied.updated)

    # ---- users --------------------------------------------------------------------------------
    async def add_event(
        self,
        *,
        user_id: str,
        item_id: str,
        timestamp: float | None = None,
        type: str = DEFAULT_TYPE,
        value: float | None = None,
    ) -> int:
        """Log the event durably, then apply it: a positive type appends the item to the
        user's history, a negative one (dislike) hides the item from them. Returns the
        history's length."""
        weight = self.event_types.get(type)
        if weight is None:
            raise InvalidInputError(
                f"event type {type!r} is not one of {sorted(self.event_types)} "
                "(FUSIONREC_EVENT_TYPES)"
            )
        snap = self.ready()
        if snap.live(item_id) is None:
            raise NotFoundError(
                f"item_id {item_id!r} is not in the catalog of model version {snap.version}"
            )
        uhash = self.uhash(user_id)
        if self.event_log is not None:  # durable first: a 503 here leaves nothing half-done
            event = Event(
                event_id=uuid.uuid4().hex,
                user_key=uhash,
                item_id=item_id,
                type=type,
                weight=weight,
                timestamp=time.time() if timestamp is None else timestamp,
                value=value,
                received=time.time(),
            )
            await self.event_log.record([event])
        if weight < 0:
            await self.history.append(negative_key(uhash), [item_id], [])
            stored = await self.history.get(uhash)
            if stored is None:
                stored = await self._bundle_history(snap, user_id, uhash)
            return len(stored)
        seed = await self._bundle_history(snap, user_id, uhash)
        n = await self.history.append(uhash, [item_id], seed)
        await self.cache.delete([user_vector_key(uhash)])
        return n

    async def forget_user(self, *, user_id: str) -> None:
        """Erase the user: a durable tombstone first (so the bundle's history of the user is
        never served again, by any replica, after restarts, and the next training drops the
        user), then the user's history and cached vector — a fixed set of keys, no scan."""
        uhash = self.uhash(user_id)
        await self.tombstones.add(uhash)  # raises DependencyError when it cannot be recorded
        if not await self.cache.delete([user_vector_key(uhash)]):
            raise DependencyError(
                "cannot reach Redis to erase the user's cached vector; the erasure is "
                "recorded, retry the DELETE when Redis is back",
                dependency="redis",
            )
        await self.history.delete(uhash)
        await self.history.delete(negative_key(uhash))
        if self.event_log is not None:
            await self.event_log.erase(uhash)
