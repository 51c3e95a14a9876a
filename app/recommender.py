"""The serving core the routes call: one snapshot at a time, micro-batched model work.

Nothing here knows HTTP: routes call the keyword-only coroutines ``recommend``, ``search``,
``similar``, ``upsert_items``, ``patch_item``, ``delete_item``, ``item``, ``items``,
``add_event``, ``forget_user`` and ``reload``, which raise the domain errors of
``model_store.errors``.

**Filters and fields** (``model_store.data.attributes``). A request's ``filter`` is validated
against the snapshot's attribute types and turned into a cached boolean mask over catalog
rows (hidden and deleted rows never in it); retrieval then searches only the allowed rows
(``indexer.index.search_allowed``), so a filtered answer holds ``k`` items when ``k`` match.
``fields`` are read from the snapshot's attribute table for the returned rows only.

**Similar items.** Cosine between the fused item vectors (what the index holds); an item
added by text only has one through its text path. The explanation gives the LM-text and the
ID-embedding (collaborative) cosines separately.

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
fails the change is undone. ``patch_item`` is an upsert of some fields (attributes alone
reuse the item's text embedding: no LM work); ``delete_item`` removes the item from the
index through ``indexer.catalog.remove_items`` and publishes the same way.
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
import torch

from app.batching import MicroBatcher
from app.errors import hide_paths
from app.event_log import EventLogWriter
from app.history import HistoryStore
from app.inference import ModelWork, RecJob, RecOut, Scored, SearchJob, SearchMode
from app.keys import negative_key, user_hash, user_vector_key, vector_key
from app.metrics import Metrics
from app.ranking import allowed_popular, popular
from app.snapshot import Snapshot, build_snapshot, freeze_heap
from app.tombstones import FileTombstones, Tombstones
from app.updates import apply_and_publish, remove_and_publish
from app.vector_cache import VectorCache
from model_store.bundle import store as store_mod
from model_store.bundle.io import load_bundle
from model_store.catalog.changes import Change, current_text, encode_items, validate_items
from model_store.data.attributes import check_fields, parse_filter
from model_store.errors import (
    BundleError,
    DependencyError,
    FusionrecError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    ReloadRefusedError,
)
from model_store.events.log import DEFAULT_EVENT_TYPES, DEFAULT_TYPE, Event
from model_store.privacy import users as private

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
        search_mode: SearchMode = "dense",
        search_min_similarity: float = 0.3,
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
            lock=self._model_lock,
            candidates=candidates,
            search_user_weight=search_user_weight,
            min_similarity=search_min_similarity,
        )
        self.search_mode: SearchMode = search_mode
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
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> Answer:
        snap = self.ready()
        allowed = snap.attrs.mask(parse_filter(filter, snap.attrs.types))
        names = check_fields(fields, snap.attrs.types)
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
            order, order_scores = allowed_popular(snap.popular, snap.popular_scores, allowed)
            items = [
                Scored(snap.bundle.item_ids[r], s)
                for r, s in popular(order, order_scores, k, excluded)
            ]
            return Answer(
                snap.version, "cold_start", self._with_fields(snap, items, names), unknown
            )
        vec, hit = await self._user_vector(snap, key)
        out = await self._rec.submit(RecJob(snap, rows, vec, excluded, k, explain, allowed))
        if not hit and key is not None:
            await self.cache.set(key, out.vector, tag=snap.version)
        self._personalized.inc()
        return Answer(
            snap.version, "personalized", self._with_fields(snap, out.items, names), unknown
        )

    @staticmethod
    def _with_fields(snap: Snapshot, items: list[Scored], names: list[str]) -> list[Scored]:
        """The requested catalog fields attached to each result."""
        if names:
            rows = [snap.row_of[i.item_id] for i in items]
            for item, values in zip(items, snap.attrs.fields(rows, names), strict=True):
                item.fields = values
        return items

    async def search(
        self,
        *,
        query: str,
        user_id: str | None,
        history: Sequence[str] | None,
        k: int,
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        mode: SearchMode | None = None,
        offset: int = 0,
    ) -> Answer:
        snap = self.ready()
        if snap.text is None:
            raise NotReadyError(f"search is unavailable: {snap.text_error}")
        allowed = snap.attrs.mask(parse_filter(filter, snap.attrs.types))
        names = check_fields(fields, snap.attrs.types)
        unknown: list[str] = []
        rows, key = await self._history_rows(snap, user_id, history, unknown)
        vec: np.ndarray | None = None
        if rows:
            vec, _ = await self._user_vector(snap, key)
            if vec is None:
                vec = (await self._rec.submit(RecJob(snap, rows, None, set(), 0, False))).vector
                if key is not None:
                    await self.cache.set(key, vec, tag=snap.version)
        job = SearchJob(snap, query, vec, k, allowed, mode or self.search_mode, offset)
        items = await self._text.submit(job)
        strategy: Strategy = "personalized" if vec is not None else "cold_start"
        self.metrics.strategy.labels("search", strategy).inc()
        return Answer(snap.version, strategy, self._with_fields(snap, items, names), unknown)

    async def similar(
        self,
        *,
        item_id: str,
        k: int,
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Answer:
        """Items closest to ``item_id`` in the fused item-vector space (cosine); an item
        added by text only has a vector too (its text path)."""
        snap = self.ready()
        row = snap.live(item_id)
        if row is None:
            raise NotFoundError(
                f"item {item_id!r} is not in the catalog of model version {snap.version}"
            )
        allowed = snap.attrs.mask(parse_filter(filter, snap.attrs.types))
        names = check_fields(fields, snap.attrs.types)
        mask = snap.attrs.visible if allowed is None else allowed
        items = await asyncio.to_thread(self.work.similar, snap, row, k, mask, explain)
        return Answer(snap.version, "personalized", self._with_fields(snap, items, names), [])

    # ---- items --------------------------------------------------------------------------------
    def item(self, *, item_id: str) -> tuple[str, dict[str, Any], bool]:
        """(model version, the item's text fields, whether it has a trained ID embedding)."""
        snap = self.ready()
        row = snap.live(item_id)
        if row is None:
            raise NotFoundError(
                f"item {item_id!r} is not in the catalog of model version {snap.version}"
            )
        fields = snap.attrs.fields([row], list(snap.attrs.types))[0]
        return snap.version, fields, bool(snap.bundle.model.has_id[row + 1])

    def items(
        self, *, item_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> tuple[str, list[tuple[str, dict[str, Any], bool]], list[str]]:
        """(model version, (item_id, fields, trained) of each live item in order, the ids
        not in the catalog). ``fields`` None = every field."""
        snap = self.ready()
        names = check_fields(fields, snap.attrs.types) if fields else list(snap.attrs.types)
        found: list[tuple[str, int]] = []
        missing: list[str] = []
        for item_id in dict.fromkeys(item_ids):
            row = snap.live(item_id)
            if row is None:
                missing.append(item_id)
            else:
                found.append((item_id, row))
        values = snap.attrs.fields([r for _, r in found], names)
        has_id = snap.bundle.model.has_id
        out = [
            (item_id, v, bool(has_id[row + 1]))
            for (item_id, row), v in zip(found, values, strict=True)
        ]
        return snap.version, out, missing

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
        await self._published(new_snap.version)
        return UpsertResult(new_snap.version, applied.added, applied.updated)

    async def patch_item(self, *, item_id: str, values: Mapping[str, Any]) -> UpsertResult:
        """Edit some fields of a live item (text fields are re-encoded; attributes such as
        ``available`` alone need no LM work); persisted as a new CURRENT bundle version."""
        if not values:
            raise InvalidInputError("the body names no field to change")
        if "item_id" in values:
            raise InvalidInputError("item_id: cannot be changed by PATCH (it is in the path)")
        async with self._admin_lock:
            snap = self.ready()
            if snap.live(item_id) is None:
                raise NotFoundError(
                    f"item {item_id!r} is not in the catalog of model version {snap.version}"
                )
            records = validate_items(snap.bundle, [{"item_id": item_id, **values}])
            if set(values) & set(snap.bundle.text_columns):
                if snap.text is None:
                    raise NotReadyError(f"text edits are unavailable: {snap.text_error}")
                emb = await asyncio.to_thread(
                    encode_items, snap.bundle, records, device=self.device
                )
            else:
                emb = current_text(snap.bundle, records)
            new_snap, applied = await asyncio.to_thread(
                apply_and_publish,
                snap,
                Change(records, emb),
                store=self.store,
                lock=self._model_lock,
            )
            self._install(new_snap, full_gc=False)
        await self._published(new_snap.version)
        return UpsertResult(new_snap.version, applied.added, applied.updated)

    async def delete_item(self, *, item_id: str) -> str:
        """Delete an item from every answer (its catalog row stays, marked removed);
        persisted as a new CURRENT bundle version, which is returned."""
        async with self._admin_lock:
            snap = self.ready()
            if snap.live(item_id) is None:
                raise NotFoundError(
                    f"item {item_id!r} is not in the catalog of model version {snap.version}"
                )
            new_snap = await asyncio.to_thread(
                remove_and_publish, snap, [item_id], store=self.store, lock=self._model_lock
            )
            self._install(new_snap, full_gc=False)
        await self._published(new_snap.version)
        return new_snap.version

    async def _published(self, version: str) -> None:
        """Tell the other replicas (app.follow) that this process made ``version`` CURRENT."""
        if self.on_publish is not None:
            await self.on_publish(version)

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
