"""Reading: recommend, search, similar items and item reads, on the snapshot being served.

**Recommend.** history (request > stored > bundle's training history) → user vector (cache
keyed by model version + user hash or history hash; on a miss encoded in the micro-batch)
→ retrieval, rerank, top-k (``inference.ModelWork``). No usable history → cold start:
items by training popularity, flagged.

**Search.** The query is encoded by the bundle's own text model and ranked by cosine; with
a user the retrieval score reorders the candidates (``ranking.blend``, β =
``FUSIONREC_SEARCH_USER_WEIGHT``).

**Similar items.** Cosine between the fused item vectors (what the index holds); an item
added by text only has one through its text path. The explanation gives the LM-text and the
ID-embedding (collaborative) cosines separately.

**Filters and fields** (``model_store.data.attributes``). A request's ``filter`` is
validated against the snapshot's attribute types and turned into a cached boolean mask over
catalog rows (hidden and deleted rows never in it); retrieval then searches only the
allowed rows (``indexer.index.search_allowed``), so a filtered answer holds ``k`` items when
``k`` match. ``fields`` are read from the snapshot's attribute table for the returned rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.batching import MicroBatcher
from app.core.lookup import Lookup, live_row, resolve, select, with_fields
from app.core.snapshot import Snapshot, SnapshotHolder
from app.inference import ModelWork, RecJob, RecOut, Scored, SearchJob
from app.metrics import Metrics
from app.ranking import allowed_popular, popular
from app.schemas import ItemsBatchGet, RecommendRequest, SearchRequest, SimilarRequest
from app.settings import BatchingSettings, RuntimeSettings, SearchSettings
from app.vector_cache import LocalLRU
from model_store.data.attributes import check_fields
from model_store.errors import NotReadyError

QUERY_TTL_S = 24 * 3600.0  # a query's embedding changes only with the bundle (in the key)
Strategy = Literal["personalized", "cold_start", "search", "search_personalized"]


@dataclass
class Answer:
    model_version: str
    strategy: Strategy
    items: list[Scored]
    unknown_items: list[str]


@dataclass
class ItemRecord:
    item_id: str
    fields: dict[str, Any]
    trained: bool  # has a trained ID embedding (else: text path only)


@dataclass
class ItemsFound:
    model_version: str
    items: list[ItemRecord]  # the live ones, in the order asked
    missing: list[str]  # ids not in the catalog (or deleted)


class Reading:
    """Answers the read requests; the model work runs on two micro-batchers' threads."""

    def __init__(
        self,
        *,
        snapshots: SnapshotHolder,
        lookup: Lookup,
        metrics: Metrics,
        runtime: RuntimeSettings,
        batching: BatchingSettings,
        search: SearchSettings,
    ) -> None:
        self.snapshots = snapshots
        self.lookup = lookup
        self.default_mode = search.mode
        # query text → its embedding (the model version in the key: each bundle has its own
        # text model); event-loop only, like the user-vector LRU
        self._queries = (
            LocalLRU(search.query_cache, QUERY_TTL_S) if search.query_cache > 0 else None
        )
        self.work = ModelWork(
            lock=snapshots.model_lock,
            candidates=runtime.candidates,
            search_user_weight=search.user_weight,
            min_similarity=search.min_similarity,
        )
        # metric children bound once (labels() is a dict lookup under a lock per call)
        self._cold_starts = metrics.strategy.labels("recommend", "cold_start")
        self._personalized = metrics.strategy.labels("recommend", "personalized")
        self._searches = {
            s: metrics.strategy.labels("search", s) for s in ("search_personalized", "search")
        }
        user_batches = metrics.batch_size.labels("user")
        query_batches = metrics.batch_size.labels("query")
        wait = batching.max_wait_ms / 1000.0
        self._rec = MicroBatcher[RecJob, RecOut](
            "recommend",
            self.work.recommend_batch,
            max_size=batching.max_size,
            max_wait_s=wait,
            on_batch=user_batches.observe,
        )
        self._text = MicroBatcher[SearchJob, list[Scored]](
            "search",
            self.work.search_batch,
            max_size=batching.max_size,
            max_wait_s=wait,
            on_batch=query_batches.observe,
        )

    def start(self) -> None:
        """Start the micro-batchers' worker threads."""
        self._rec.start()
        self._text.start()

    def stop(self) -> None:
        self._rec.stop()
        self._text.stop()

    async def recommend(self, *, request: RecommendRequest) -> Answer:
        """Next items for a user (stored history) or an explicit history; cold start when
        neither gives a usable history."""
        snap = self.snapshots.ready()
        chosen = await select(snap, filter=request.filter, fields=request.fields)
        unknown: list[str] = []
        user = self.lookup.shopper(request.user_id)
        rows, key = await self.lookup.history_rows(
            snap, user=user, history=request.history, unknown=unknown
        )
        excluded = set(resolve(snap, request.exclude, report=True, unknown=unknown))
        if request.exclude_history:
            excluded.update(rows)
        if user is not None:
            excluded.update(await self.lookup.disliked_rows(snap, user.uhash, unknown))
        if not rows:
            self._cold_starts.inc()
            order, scores = allowed_popular(snap.popular, snap.popular_scores, chosen.allowed)
            ids = snap.bundle.item_ids
            items = [Scored(ids[r], s) for r, s in popular(order, scores, request.k, excluded)]
            return Answer(
                snap.version, "cold_start", with_fields(snap, items, chosen.names), unknown
            )
        vec = await self.lookup.cached_vector(snap, key)
        job = RecJob(snap, rows, vec, excluded, request.k, request.explain, chosen.allowed)
        out = await self._rec.submit(job)
        if vec is None:
            await self.lookup.keep_vector(snap, key, out.vector)
        self._personalized.inc()
        items = with_fields(snap, out.items, chosen.names)
        return Answer(snap.version, "personalized", items, unknown)

    async def search(self, *, request: SearchRequest) -> Answer:
        """Items matching a text query, reordered for the user when a user or history is
        given."""
        snap = self.snapshots.ready()
        if snap.text is None:
            raise NotReadyError(f"search is unavailable: {snap.text_error}")
        chosen = await select(snap, filter=request.filter, fields=request.fields)
        unknown: list[str] = []
        user = self.lookup.shopper(request.user_id)
        rows, key = await self.lookup.history_rows(
            snap, user=user, history=request.history, unknown=unknown
        )
        vec: np.ndarray | None = None
        if rows:
            vec = await self.lookup.cached_vector(snap, key)
            if vec is None:
                vec = (await self._rec.submit(RecJob(snap, rows, None, set(), 0, False))).vector
                await self.lookup.keep_vector(snap, key, vec)
        mode = request.mode or self.default_mode
        job = SearchJob(snap, request.query, vec, request.k, chosen.allowed, mode, request.offset)
        key = f"{snap.version}\n{request.query}"
        cached = self._queries.get(key) if self._queries is not None else None
        if cached is not None:
            job.embedding = np.frombuffer(cached, dtype=np.float32)
        items = await self._text.submit(job)
        if cached is None and self._queries is not None and job.embedding is not None:
            self._queries.set(key, job.embedding.astype(np.float32).tobytes())
        strategy: Strategy = "search_personalized" if vec is not None else "search"
        self._searches[strategy].inc()
        return Answer(snap.version, strategy, with_fields(snap, items, chosen.names), unknown)

    async def similar(self, *, item_id: str, request: SimilarRequest) -> Answer:
        """Items closest to ``item_id`` in the fused item-vector space (cosine); an item
        added by text only has a vector too (its text path)."""
        snap = self.snapshots.ready()
        row = live_row(snap, item_id)
        chosen = await select(snap, filter=request.filter, fields=request.fields)
        mask = snap.attrs.visible if chosen.allowed is None else chosen.allowed
        items = await asyncio.to_thread(
            self.work.similar, snap, row, request.k, mask, request.explain
        )
        return Answer(snap.version, "personalized", with_fields(snap, items, chosen.names), [])

    def item(self, *, item_id: str) -> tuple[str, ItemRecord]:
        """(model version, the item with every catalog field)."""
        snap = self.snapshots.ready()
        row = live_row(snap, item_id)
        fields = snap.attrs.fields([row], list(snap.attrs.types))[0]
        return snap.version, ItemRecord(item_id, fields, _trained(snap, row))

    def items(self, *, request: ItemsBatchGet) -> ItemsFound:
        """The live items among ``request.ids`` (each once, in order) with the requested
        fields (every field when none are named), and the ids not in the catalog."""
        snap = self.snapshots.ready()
        types = snap.attrs.types
        names = check_fields(request.fields, types) if request.fields else list(types)
        found: list[tuple[str, int]] = []
        missing: list[str] = []
        for item_id in dict.fromkeys(request.ids):
            row = snap.live(item_id)
            if row is None:
                missing.append(item_id)
            else:
                found.append((item_id, row))
        values = snap.attrs.fields([r for _, r in found], names)
        records = [
            ItemRecord(item_id, v, _trained(snap, row))
            for (item_id, row), v in zip(found, values, strict=True)
        ]
        return ItemsFound(snap.version, records, missing)


def _trained(snap: Snapshot, row: int) -> bool:
    return bool(snap.bundle.model.has_id[row + 1])
