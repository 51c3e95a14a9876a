"""The serving core: one immutable (bundle, index) snapshot, micro-batched model calls.

Nothing here knows HTTP. Routes call the keyword-only coroutines ``recommend``, ``search``,
``upsert_items``, ``item``, ``add_event``, ``forget_user`` and ``reload``.

**Snapshot.** The loaded bundle, its index and the lookups built from them are one
:class:`Snapshot`; a request reads ``self.snapshot`` once and uses that object to the end,
so a reload (which builds a complete new snapshot off the event loop and then swaps one
reference) never mixes two models: requests in flight finish on the old pair.

**Recommend.** history (request > stored > bundle's training history) → user vector (cache
keyed by model version + sha256 of user id or history; on a miss the micro-batched
``FusedModel.user_vectors``) → FAISS top ``max(N, k)`` plus the excluded count → drop
excluded/seen → ``FusedModel.rerank`` (fusion head when the bundle enabled it) → top-k.
No usable history → cold start: items by ``log_pop`` (training popularity), flagged.

**Search.** The query is encoded by the bundle's own text model (the ``TextEncoder`` that
produced ``text_emb``); ``c_i = cos(q, t_i)`` is an exact matmul against ``text_emb`` and
the top ``N`` candidates by ``c`` are kept. A bundle with a search index (catalogs above
65,536 items, see ``indexer.publish``) takes its candidates from that IVF-PQ index instead of
the full scan, then rescores them exactly against ``text_emb``. Without a user the score is
``c_i``. With a user vector ``u`` the retrieval score ``r_i = <u, v_i>`` is blended after
standardising both over the N candidates::

    score_i = (1 − β) · z(c)_i + β · z(r)_i,    z(x) = (x − mean(x)) / (std(x) + 1e-6)

with β = ``FUSIONREC_SEARCH_USER_WEIGHT`` (default 0.3): the query decides the candidate
set, the user reorders within it.

**Micro-batching.** Model work runs on two worker threads (user encode + retrieval +
rerank; query encode + text search) under ``torch.inference_mode``; concurrent requests
are batched (``FUSIONREC_BATCH_MAX_SIZE``, ``FUSIONREC_BATCH_MAX_WAIT_MS``). The user
encoder runs as one traced call (``FusedModel.serving_encoder``) so the worker does not
queue for the GIL after every small op while the event loop holds it.

**Upsert.** New items are encoded through the text path (``indexer.encode.encode_new_items``,
the training text format → ``FusedModel.extend_catalog``/``replace_text`` →
``FusedModel.item_vectors``), added to the live index under the model lock, and persisted by
``indexer.publish.persist_update`` as a new bundle version (catalog, items and index
rewritten, weights hard-linked) that becomes CURRENT, so a restart keeps them. If publishing
fails the in-memory change is rolled back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pandas as pd
import torch

from app.cache import (
    HistoryStore,
    VectorCache,
    user_hash,
    vector_key,
)
from app.errors import InvalidRequestError, NotReadyError, ReloadRefusedError
from app.metrics import Metrics
from indexer.build import ItemIndex, build_index
from indexer.encode import bundle_precision, encode_new_items, text_encoder
from indexer.publish import load_text_index, persist_update
from model_store import bundle as bundle_mod
from model_store.bundle import Bundle, load_bundle
from model_store.errors import BundleError, FusionrecError, NotFoundError
from model_store.lora import ADAPTER_FILE
from model_store.model import left_pad
from model_store.text_encoder import TextEncoder, pick_device

log = logging.getLogger("app.recommender")
J = TypeVar("J")
R = TypeVar("R")
_STOP = object()
Strategy = Literal["personalized", "cold_start"]
EXPLAIN_HISTORY = 3

# ---- micro-batching ---------------------------------------------------------------------------


class MicroBatcher(Generic[J, R]):
    def __init__(
        self,
        name: str,
        fn: Callable[[list[J]], list[R]],
        *,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._thread.start()
            self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        if self._started:
            self._q.put(_STOP)
            self._thread.join(timeout)
            self._started = False

    async def submit(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._q.put((job, fut, loop))
        return await fut

    def _gather(
        self, first: object
    ) -> tuple[list[tuple[J, asyncio.Future[R], asyncio.AbstractEventLoop]], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            jobs = [job for job, _, _ in batch]
            try:
                results: list[R] | None = self.fn(jobs)
                error: BaseException | None = None
            except BaseException as exc:  # delivered to every caller of the batch
                results, error = None, exc
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            for i, (_, fut, loop) in enumerate(batch):
                value = results[i] if results is not None else None
                try:
                    loop.call_soon_threadsafe(_settle, fut, value, error)
                except RuntimeError:  # the caller's loop is closed
                    log.debug("dropping a result for a closed event loop")
            if stop:
                return


def _settle(fut: asyncio.Future[R], value: R | None, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)  # type: ignore[arg-type]


# ---- snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A loaded bundle with its index: what one request reads from start to end."""

    bundle: Bundle
    version: str
    index: ItemIndex
    index_source: Literal["bundle", "exact-in-memory"]
    text_index: ItemIndex | None  # ANN over text embeddings (large catalogs) or exact scan
    row_of: dict[str, int]
    item_vecs: np.ndarray  # (N, D) float32 retrieval vectors, row k ↔ catalog row k
    popular: np.ndarray  # catalog rows by training popularity, most popular first
    text: TextEncoder | None
    text_error: str | None

    @property
    def n_items(self) -> int:
        return len(self.bundle.item_ids)


@dataclass
class Scored:
    item_id: str
    score: float
    explanation: dict[str, Any] | None = None


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


@dataclass
class _RecJob:
    snap: Snapshot
    hist: list[int]  # catalog rows, oldest first
    vector: np.ndarray | None  # cached user vector, or None to encode
    exclude: set[int]
    k: int  # 0 = only the user vector
    explain: bool


@dataclass
class _RecOut:
    vector: np.ndarray
    items: list[Scored] = field(default_factory=list)


@dataclass
class _SearchJob:
    snap: Snapshot
    query: str
    vector: np.ndarray | None
    k: int


def _text_encoder(
    bundle: Bundle, device: str, cache: dict[tuple[str, int, str, str], TextEncoder]
) -> tuple[TextEncoder | None, str | None]:
    """The query/item text encoder of a bundle (shared between snapshots of one model)."""
    tm = bundle.manifest.get("text_model", {})
    name = str(tm.get("name", bundle.config.text.model))
    max_length = int(tm.get("max_length", bundle.config.text.max_length))
    adapter = str(bundle.manifest.get("files", {}).get(ADAPTER_FILE, ""))
    precision = bundle_precision(bundle, pick_device(device))
    key = (name, max_length, adapter, precision)
    if key not in cache:
        try:  # the indexer's per-process encoder: one copy of the LM for queries and items
            cache[key] = text_encoder(name, max_length, device, bundle=bundle, precision=precision)
        except FusionrecError as exc:
            return None, f"text model {name!r} cannot be loaded: {exc}"
    return cache[key], None


def build_snapshot(
    bundle: Bundle, *, device: str, text_cache: dict[tuple[str, int, str, str], TextEncoder]
) -> Snapshot:
    """Everything a request needs from a bundle; raises BundleError when it is unusable."""
    model = bundle.model
    with torch.inference_mode():
        vecs = model.item_vectors().float().cpu().numpy()
        model.serving_encoder()  # traced now rather than on the first request
    rows = np.arange(len(bundle.item_ids), dtype=np.int64)
    section = bundle.manifest.get("index")
    source: Literal["bundle", "exact-in-memory"]
    if section:
        index = ItemIndex.load(
            bundle.path, section, dim=vecs.shape[1], n_items=len(bundle.item_ids)
        )
        source = "bundle"
    else:
        index = build_index(vecs, rows, kind="flat")
        source = "exact-in-memory"
    log_pop = model.log_pop[1:].float().cpu().numpy()
    popular = np.argsort(-log_pop, kind="stable")
    if index.removed:
        popular = popular[~np.isin(popular, np.fromiter(index.removed, dtype=np.int64))]
    text, text_error = _text_encoder(bundle, device, text_cache)
    text_index = load_text_index(bundle) if section else None
    return Snapshot(
        bundle=bundle,
        version=bundle.version,
        index=index,
        index_source=source,
        text_index=text_index,
        row_of={item: k for k, item in enumerate(bundle.item_ids)},
        item_vecs=np.ascontiguousarray(vecs),
        popular=popular,
        text=text,
        text_error=text_error,
    )


def _freeze_heap(*, full: bool) -> None:
    """Take what is alive now (the bundle's histories and catalog: ~10⁵–10⁷ objects) out of
    the cyclic garbage collector's scans; otherwise each full collection walks all of them
    while requests wait (a p99 of 230 ms at saturation on MovieLens).

    ``full`` (start and reload) unfreezes and collects first, so a replaced snapshot's
    reference cycles are freed; that pass holds the GIL for as long as the heap is big.
    Item upserts, which can be frequent, only freeze (O(1)): cycles left by the snapshots
    they replace wait for the next reload. Reference counting frees everything else.
    """
    if full:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


# ---- the recommender --------------------------------------------------------------------------


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
    ) -> None:
        self.store = store
        self.cache = cache
        self.history = history
        self.metrics = metrics
        self.device = (
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.candidates = candidates
        self.search_user_weight = search_user_weight
        # metric children bound once (labels() is a dict lookup under a lock per call)
        self._cache_hits = metrics.cache.labels("hit")
        self._cache_misses = metrics.cache.labels("miss")
        self._cold_starts = metrics.strategy.labels("recommend", "cold_start")
        self._personalized = metrics.strategy.labels("recommend", "personalized")
        self.snapshot: Snapshot | None = None
        self.load_error: str | None = None
        self.versions_served: list[str] = []
        self._forgotten: set[str] = set()
        self._text_cache: dict[tuple[str, int, str, str], TextEncoder] = {}
        # held by the workers while they compute and by upserts while they mutate
        self._model_lock = threading.Lock()
        self._admin_lock = asyncio.Lock()
        wait = batch_max_wait_ms / 1000.0
        self._rec = MicroBatcher[_RecJob, _RecOut](
            "recommend",
            self._run_rec,
            max_size=batch_max_size,
            max_wait_s=wait,
            on_batch=lambda n: metrics.batch_size.labels("user").observe(n),
        )
        self._text = MicroBatcher[_SearchJob, list[Scored]](
            "search",
            self._run_search,
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
        bundle = load_bundle(self.store, version, device=self.device)
        return build_snapshot(bundle, device=self.device, text_cache=self._text_cache)

    def _install(self, snap: Snapshot, *, full_gc: bool = True) -> None:
        self.snapshot = snap
        self.load_error = None
        _freeze_heap(full=full_gc)
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
                name = bundle_mod.current_version(self.store)
                if old is not None and name == old.version:
                    return ReloadResult(name, name, False)
                snap = await asyncio.to_thread(self._load, name)
            except BundleError as exc:
                self.metrics.reloads.labels("refused").inc()
                self.metrics.reload_refused.info(
                    {"version": name, "error": type(exc).__name__, "reason": str(exc)[:500]}
                )
                keeps = f"; still serving {old.version}" if old else ""
                log.error("reload of %s refused: %s%s", name, exc, keeps)
                raise ReloadRefusedError(f"bundle refused: {exc}{keeps}") from exc
            self._install(snap)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving %s (was %s)", snap.version, old.version if old else None)
            return ReloadResult(snap.version, old.version if old else None, True)

    # ---- history ------------------------------------------------------------------------------
    async def _stored_history(self, snap: Snapshot, user_id: str) -> list[str]:
        uhash = user_hash(user_id)
        stored = await self.history.get(uhash)
        if stored is not None:
            return stored
        if uhash in self._forgotten:
            return []
        return snap.bundle.histories.get(user_id, [])

    def _resolve(
        self, snap: Snapshot, ids: Sequence[str], *, report: bool, unknown: list[str]
    ) -> list[int]:
        if not report and not snap.index.removed:  # the common case, on every request
            return [r for r in map(snap.row_of.get, ids) if r is not None]
        rows: list[int] = []
        for item in ids:
            row = snap.row_of.get(item)
            if row is None or row in snap.index.removed:
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
            rows = self._resolve(
                snap, await self._stored_history(snap, user_id), report=False, unknown=unknown
            )
            return rows, vector_key(snap.version, user=user_id) if rows else None
        return [], None

    async def _user_vector(
        self, snap: Snapshot, rows: list[int], key: str | None
    ) -> tuple[np.ndarray | None, bool]:
        """(cached vector or None, whether it was a hit)."""
        if key is None:
            return None, False
        vec = await self.cache.get(key)
        if vec is not None and vec.shape[0] == snap.item_vecs.shape[1]:
            self._cache_hits.inc()
            return vec, True
        self._cache_misses.inc()
        return None, False

    # ---- recommend ----------------------------------------------------------------------------
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
        if not rows:
            self._cold_starts.inc()
            return Answer(snap.version, "cold_start", self._popular(snap, k, excluded), unknown)
        vec, hit = await self._user_vector(snap, rows, key)
        out = await self._rec.submit(_RecJob(snap, rows, vec, excluded, k, explain))
        if not hit and key is not None:
            await self.cache.set(key, out.vector)
        self._personalized.inc()
        return Answer(snap.version, "personalized", out.items, unknown)

    def _popular(self, snap: Snapshot, k: int, excluded: set[int]) -> list[Scored]:
        log_pop = snap.bundle.model.log_pop
        out: list[Scored] = []
        for row in snap.popular[: k + len(excluded)].tolist():
            if row not in excluded:
                out.append(Scored(snap.bundle.item_ids[row], float(log_pop[row + 1])))
            if len(out) == k:
                break
        return out

    def _run_rec(self, jobs: list[_RecJob]) -> list[_RecOut]:
        out: list[_RecOut | None] = [None] * len(jobs)
        with self._model_lock, torch.inference_mode():
            groups: dict[int, list[int]] = {}
            for i, job in enumerate(jobs):
                groups.setdefault(id(job.snap), []).append(i)
            for idx in groups.values():
                for i, res in zip(idx, self._rec_group([jobs[i] for i in idx]), strict=True):
                    out[i] = res
        return [o for o in out if o is not None]

    def _rec_group(self, jobs: list[_RecJob]) -> list[_RecOut]:
        snap = jobs[0].snap
        model = snap.bundle.model
        dev = model.text_emb.device
        max_len = snap.bundle.config.model.max_len
        vecs = np.zeros((len(jobs), snap.item_vecs.shape[1]), dtype=np.float32)
        todo = [i for i, j in enumerate(jobs) if j.vector is None]
        hist = None  # (B, L) model input, built only when a forward needs it
        if todo or model.use_head:
            # pad to the batch's longest history, not max_len: positions count from the end
            # and padding is masked, so the numbers are the same and the forward is shorter
            width = min(max_len, max(len(j.hist) for j in jobs))
            hist = left_pad([[r + 1 for r in j.hist] for j in jobs], width).to(dev)
        if todo:
            assert hist is not None
            encode = model.serving_encoder()
            vecs[todo] = encode(hist[todo] if len(todo) < len(jobs) else hist).float().cpu().numpy()
        for i, j in enumerate(jobs):
            if j.vector is not None:
                vecs[i] = j.vector
        ranked = [i for i, j in enumerate(jobs) if j.k > 0]
        results = [_RecOut(vecs[i]) for i in range(len(jobs))]
        if not ranked:
            return results
        n_keep = max(self.candidates, max(jobs[i].k for i in ranked))
        retr, cand = snap.index.search_excluding(
            vecs[ranked], n_keep, [jobs[i].exclude for i in ranked]
        )
        valid = (cand >= 0) & (cand < snap.n_items)
        cand = np.where(valid, cand, -1)
        retr = np.where(valid, retr, 0.0).astype(np.float32)
        final = retr  # retrieval order, unless the bundle's fusion head reranks
        if hist is not None and model.use_head:
            cand_t = torch.from_numpy(np.where(valid, cand + 1, 0)).to(dev)
            retr_t = torch.from_numpy(retr).to(dev)
            user_t = torch.from_numpy(vecs[ranked]).to(dev)
            final = model.rerank(hist[ranked], user_t, cand_t, retr_t).float().cpu().numpy()
        final = np.where(valid, final, -np.inf)
        k_max = max(jobs[i].k for i in ranked)
        # one sort for the batch; stable, so ties and the retrieval order are kept
        orders = np.argsort(-final, axis=1, kind="stable")[:, :k_max]
        top = np.take_along_axis(final, orders, axis=1)
        rows_top = np.take_along_axis(cand, orders, axis=1)
        n_ok = np.isfinite(top).sum(axis=1).tolist()  # -inf (invalid) sorts last
        item_ids = snap.bundle.item_ids
        for b, (i, scores, rows_b) in enumerate(
            zip(ranked, top.tolist(), rows_top.tolist(), strict=True)
        ):
            job = jobs[i]
            n = min(job.k, n_ok[b])
            expl = (
                self._explain(snap, job.hist, rows_top[b, :n], retr[b, orders[b, :n]])
                if job.explain
                else None
            )
            results[i].items = [
                Scored(item_ids[r], sc, expl[m] if expl is not None else None)
                for m, (r, sc) in enumerate(zip(rows_b[:n], scores[:n], strict=True))
            ]
        return results

    def _explain(
        self, snap: Snapshot, hist: list[int], rows: np.ndarray, retrieval: np.ndarray
    ) -> list[dict[str, Any]]:
        """Which history items are most similar to each result, by text and by vector."""
        model = snap.bundle.model
        max_len = snap.bundle.config.model.max_len
        h = np.asarray(list(dict.fromkeys(hist[-max_len:])), dtype=np.int64)
        text = model.text_emb
        th = text[torch.from_numpy(h + 1).to(text.device)]  # (H, T)
        tr = text[torch.from_numpy(rows + 1).to(text.device)]  # (K, T)
        text_sim = (tr @ th.T).float().cpu().numpy()  # (K, H)
        vh = snap.item_vecs[h]
        vr = snap.item_vecs[rows]
        norm = np.linalg.norm(vr, axis=1, keepdims=True) * np.linalg.norm(vh, axis=1)[None]
        vec_sim = (vr @ vh.T) / np.maximum(norm, 1e-9)  # (K, H) cosine
        out: list[dict[str, Any]] = []
        for n in range(len(rows)):
            top = np.argsort(-text_sim[n], kind="stable")[:EXPLAIN_HISTORY]
            out.append(
                {
                    "text_similarity": float(text_sim[n].max()) if len(h) else 0.0,
                    "retrieval_score": float(retrieval[n]),
                    "history_items": [
                        {
                            "item_id": snap.bundle.item_ids[int(h[t])],
                            "text_similarity": float(text_sim[n, t]),
                            "vector_similarity": float(vec_sim[n, t]),
                        }
                        for t in top
                    ],
                }
            )
        return out

    # ---- search -------------------------------------------------------------------------------
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
            vec, _ = await self._user_vector(snap, rows, key)
            if vec is None:
                vec = (await self._rec.submit(_RecJob(snap, rows, None, set(), 0, False))).vector
                if key is not None:
                    await self.cache.set(key, vec)
        items = await self._text.submit(_SearchJob(snap, query, vec, k))
        strategy: Strategy = "personalized" if vec is not None else "cold_start"
        self.metrics.strategy.labels("search", strategy).inc()
        return Answer(snap.version, strategy, items, unknown)

    def _run_search(self, jobs: list[_SearchJob]) -> list[list[Scored]]:
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(id(job.snap), []).append(i)
        out: list[list[Scored]] = [[] for _ in jobs]
        for idx in groups.values():
            snap = jobs[idx[0]].snap
            assert snap.text is not None
            q = snap.text.encode([jobs[i].query for i in idx])  # (B, T), outside the lock
            n = min(max(self.candidates, max(jobs[i].k for i in idx)), snap.n_items)
            if snap.text_index is not None:
                with self._model_lock:
                    _, cand = snap.text_index.search(q, n)  # (B, n) rows, −1 = none
                    text = snap.bundle.model.text_emb  # candidates rescored exactly below
                    pick = torch.from_numpy(np.maximum(cand, 0) + 1).to(text.device)
                    emb = text[pick].float().cpu().numpy()
                cos = np.einsum("bt,bnt->bn", q, emb)
                cos = np.where(cand >= 0, cos, -np.inf)  # _blend drops these and ranks
                for b, i in enumerate(idx):
                    out[i] = self._blend(snap, jobs[i], cos[b], cand[b])
                continue
            with self._model_lock, torch.inference_mode():
                text = snap.bundle.model.text_emb[1 : snap.n_items + 1]  # (N, T)
                sims = torch.from_numpy(q).to(text.device) @ text.T  # (B, N)
                if snap.index.removed:
                    dead = torch.tensor(sorted(snap.index.removed), device=text.device)
                    sims[:, dead[dead < snap.n_items]] = -torch.inf
                top_s, top_r = sims.topk(n, dim=1)
                top_s_np = top_s.float().cpu().numpy()
                top_r_np = top_r.cpu().numpy()
                for b, i in enumerate(idx):
                    out[i] = self._blend(snap, jobs[i], top_s_np[b], top_r_np[b])
        return out

    def _blend(
        self, snap: Snapshot, job: _SearchJob, cos: np.ndarray, rows: np.ndarray
    ) -> list[Scored]:
        ok = np.isfinite(cos)
        cos, rows = cos[ok], rows[ok]
        score = cos
        if job.vector is not None and len(rows) > 1:
            r = snap.item_vecs[rows] @ job.vector
            beta = self.search_user_weight
            score = (1.0 - beta) * _zscore(cos) + beta * _zscore(r)
        order = np.argsort(-score, kind="stable")[: job.k]
        return [Scored(snap.bundle.item_ids[int(rows[o])], float(score[o])) for o in order]

    # ---- items --------------------------------------------------------------------------------
    def item(self, *, item_id: str) -> tuple[str, dict[str, Any], bool]:
        """(model version, the item's text fields, whether it has a trained ID embedding)."""
        snap = self.ready()
        row = snap.row_of.get(item_id)
        if row is None or row in snap.index.removed:
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
            columns = snap.bundle.text_columns
            frame = self._validate_items(snap, items, columns)
            records = [{str(c): v for c, v in row.items()} for row in frame.to_dict("records")]
            emb = await asyncio.to_thread(
                encode_new_items, snap.bundle, records, device=self.device
            )  # (M, T), same text as training
            new_snap, added, updated = await asyncio.to_thread(
                self._apply_and_publish, snap, frame, emb
            )
            self._install(new_snap, full_gc=False)
            return UpsertResult(new_snap.version, added, updated)

    def _validate_items(
        self, snap: Snapshot, items: Sequence[Mapping[str, Any]], columns: list[str]
    ) -> pd.DataFrame:
        seen: set[str] = set()
        records: list[dict[str, Any]] = []
        for n, raw in enumerate(items):
            item_id = str(raw["item_id"])
            if item_id in seen:
                raise InvalidRequestError(f"items[{n}].item_id: {item_id!r} appears twice")
            seen.add(item_id)
            bad = sorted(set(raw) - {"item_id", *columns})
            if bad:
                raise InvalidRequestError(
                    f"items[{n}]: unknown field(s) {bad}; valid text fields of this catalog: "
                    f"{columns}"
                )
            record: dict[str, Any] = {"item_id": item_id}
            old = snap.row_of.get(item_id)
            for c in columns:
                if c in raw:
                    value = raw[c]
                    if value is not None and not isinstance(value, str):
                        raise InvalidRequestError(
                            f"items[{n}].{c}: must be a string or null, got {type(value).__name__}"
                        )
                    record[c] = value
                elif old is not None:  # an edit keeps the fields it does not name
                    record[c] = snap.bundle.items.iloc[old][c]
                else:
                    record[c] = None
            if not any(isinstance(record[c], str) and record[c].strip() for c in columns):
                raise InvalidRequestError(
                    f"items[{n}] ({item_id!r}) has no text: give at least one of {columns}"
                )
            records.append(record)
        return pd.DataFrame.from_records(records, columns=["item_id", *columns])

    def _apply_and_publish(
        self, snap: Snapshot, frame: pd.DataFrame, emb: np.ndarray
    ) -> tuple[Snapshot, list[str], list[str]]:
        bundle, model, index = snap.bundle, snap.bundle.model, snap.index
        n0 = snap.n_items
        ids = frame["item_id"].tolist()
        old_rows = [snap.row_of.get(i) for i in ids]
        upd = [(n, r) for n, r in enumerate(old_rows) if r is not None]
        new = [n for n, r in enumerate(old_rows) if r is None]
        new_rows = np.arange(n0, n0 + len(new), dtype=np.int64)
        upd_rows = np.asarray([r for _, r in upd], dtype=np.int64)
        dev = model.text_emb.device
        state = (bundle.item_ids, bundle.items, snap.item_vecs, snap.popular, snap.row_of)
        old_text = model.text_emb[torch.from_numpy(upd_rows + 1).to(dev)].clone()
        old_vecs = snap.item_vecs[upd_rows].copy()
        emb_t = torch.from_numpy(emb)
        items = bundle.items.copy()
        cols = [c for c in frame.columns if c != "item_id"]
        for n, r in upd:
            items.loc[items.index[r], cols] = frame.iloc[n][cols].to_numpy()
        items = pd.concat([items, frame.iloc[new]], ignore_index=True)
        with self._model_lock, torch.no_grad():
            if upd:
                model.replace_text(torch.from_numpy(upd_rows + 1), emb_t[[n for n, _ in upd]])
            if new:
                model.extend_catalog(emb_t[new])
            model.serving_encoder()  # re-traced for the new catalog before it serves
            changed = np.concatenate([upd_rows, new_rows])
            vecs = model.item_vectors(torch.from_numpy(changed + 1).to(dev)).float().cpu()
            vecs_np = vecs.numpy()
            item_vecs = np.concatenate([snap.item_vecs, vecs_np[len(upd) :]])
            item_vecs[upd_rows] = vecs_np[: len(upd)]
            index.add(vecs_np, changed)
            if snap.text_index is not None:
                snap.text_index.add(emb_t[[n for n, _ in upd] + new].numpy(), changed)
            bundle.item_ids = bundle.item_ids + [ids[n] for n in new]
            bundle.items = items
            row_of = dict(snap.row_of)
            row_of.update({ids[n]: int(r) for n, r in zip(new, new_rows.tolist(), strict=True)})
            staged_snap = replace(
                snap,
                row_of=row_of,
                item_vecs=item_vecs,
                popular=np.concatenate([snap.popular, new_rows]),
            )
        try:
            path, manifest = self._publish(staged_snap, added=len(new), updated=len(upd))
        except BaseException:
            with self._model_lock, torch.no_grad():
                index.remove(new_rows, mark_removed=False)
                if snap.text_index is not None:
                    snap.text_index.remove(new_rows, mark_removed=False)
                if upd:
                    model.replace_text(torch.from_numpy(upd_rows + 1), old_text)
                    index.add(old_vecs, upd_rows)
                    if snap.text_index is not None:
                        snap.text_index.add(old_text.float().cpu().numpy(), upd_rows)
                model.text_emb = model.text_emb[: n0 + 1]
                model.has_id = model.has_id[: n0 + 1]
                model.log_pop = model.log_pop[: n0 + 1]
                bundle.item_ids, bundle.items = state[0], state[1]
            raise
        bundle.path, bundle.manifest = path, manifest
        return (
            replace(staged_snap, version=str(manifest["version"])),
            [ids[n] for n in new],
            [ids[n] for n, _ in upd],
        )

    def _publish(
        self,
        snap: Snapshot,
        *,
        added: int,
        updated: int,
    ) -> tuple[Path, dict[str, Any]]:
        """Write the grown catalog and index as a new CURRENT version (indexer's format)."""
        path = persist_update(
            self.store,
            snap.bundle,
            snap.index,
            note={"op": "upsert", "added": added, "updated": updated, "by": "service"},
            text_index=snap.text_index,
        )
        return path, bundle_mod.read_manifest(path)

    # ---- users --------------------------------------------------------------------------------
    async def add_event(self, *, user_id: str, item_id: str, timestamp: float | None = None) -> int:
        """Append to the user's server-side history; returns its length."""
        del timestamp  # arrival order is the history order; the timestamp is informational
        snap = self.ready()
        if item_id not in snap.row_of or snap.row_of[item_id] in snap.index.removed:
            raise NotFoundError(
                f"item_id {item_id!r} is not in the catalog of model version {snap.version}"
            )
        uhash = user_hash(user_id)
        seed = [] if uhash in self._forgotten else snap.bundle.histories.get(user_id, [])
        n = await self.history.append(uhash, [item_id], seed)
        await self.cache.delete([vector_key(v, user=user_id) for v in self.versions_served])
        return n

    async def forget_user(self, *, user_id: str) -> None:
        """Erase the user's history and cached vectors (Redis and in-process)."""
        uhash = user_hash(user_id)
        self._forgotten.add(uhash)
        await self.cache.delete([vector_key(v, user=user_id) for v in self.versions_served])
        self.cache.local.delete_matching(uhash)
        await self.history.delete(uhash)
