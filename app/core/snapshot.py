"""The snapshot holder: which bundle this process serves, loaded, reloaded and swapped.

A :class:`Snapshot` is one loaded bundle with its index and the lookups built from them. A
request reads ``SnapshotHolder.snapshot`` once (through :meth:`SnapshotHolder.ready`) and
uses that object to the end, so a reload — which builds a complete new snapshot off the
event loop and then swaps one reference — never mixes two models: requests in flight finish
on the old pair. A bundle that fails its checks is refused and the old one keeps serving.
Following the store's CURRENT by itself is :mod:`app.core.follow`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from app.errors import hide_paths
from app.metrics import Metrics
from indexer.build import build_index
from indexer.index import ItemIndex
from indexer.lexical import LexicalIndex
from indexer.publish import load_index, load_text_index
from model_store.bundle import store as store_mod
from model_store.bundle.io import Bundle, load_bundle
from model_store.bundle.retention import report_serving
from model_store.data.attributes import AttributeTable
from model_store.errors import BundleError, FusionrecError, NotReadyError, ReloadRefusedError
from model_store.text.encoder import TextEncoder, text_encoder_for

log = logging.getLogger("app.snapshot")
Device = Literal["auto", "cpu", "cuda"]


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
    popular: np.ndarray  # live catalog rows by training popularity, most popular first
    popular_scores: np.ndarray  # their log(1 + training count)
    text: TextEncoder | None  # the bundle's own text model (queries, new items)
    text_error: str | None
    attrs: AttributeTable  # filterable columns, visible rows, cached filter masks
    lexical: LexicalIndex  # BM25 over the text columns (hybrid search), follows upserts
    catalog_seq: int = 0  # the catalog table's changes applied (app.core.catalog_apply)
    item_versions: dict[str, int] = field(default_factory=dict)  # item -> its row's version

    @property
    def n_items(self) -> int:
        return len(self.bundle.item_ids)

    def live(self, item_id: str) -> int | None:
        """The catalog row of ``item_id`` when it is in the catalog and not removed."""
        row = self.row_of.get(item_id)
        return None if row is None or row in self.index.removed else row


def popular_rows(bundle: Bundle, removed: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Live rows by training popularity, most popular first, and their log popularity."""
    log_pop = bundle.model.log_pop[1:].float().cpu().numpy()
    order = np.argsort(-log_pop, kind="stable")
    if removed:
        order = order[~np.isin(order, np.fromiter(removed, dtype=np.int64))]
    return order, log_pop[order]


def build_snapshot(bundle: Bundle, *, device: str) -> Snapshot:
    """Everything a request needs from a bundle; raises BundleError when it is unusable."""
    model = bundle.model
    with torch.inference_mode():
        vecs = model.item_vectors().float().cpu().numpy()
        model.serving_encoder()  # traced now rather than on the first request
    source: Literal["bundle", "exact-in-memory"]
    if bundle.manifest.index is not None:
        index, source = load_index(bundle), "bundle"
        text_index = load_text_index(bundle)
    else:
        rows = np.arange(len(bundle.item_ids), dtype=np.int64)
        index, source = build_index(vecs, rows, kind="flat"), "exact-in-memory"
        text_index = None
    order, order_scores = popular_rows(bundle, index.removed)
    text: TextEncoder | None = None
    text_error: str | None = None
    try:  # one copy of the LM per process for queries and new items
        text = text_encoder_for(bundle, device)
    except FusionrecError as exc:
        name = bundle.manifest.text_model.name
        text_error = f"text model {name!r} cannot be loaded: {exc}"
    return Snapshot(
        bundle=bundle,
        version=bundle.version,
        index=index,
        index_source=source,
        text_index=text_index,
        row_of={item: k for k, item in enumerate(bundle.item_ids)},
        item_vecs=np.ascontiguousarray(vecs),
        popular=order,
        popular_scores=order_scores,
        text=text,
        text_error=text_error,
        attrs=attribute_table(bundle, index.removed),
        lexical=LexicalIndex.build(bundle.items, bundle.text_columns),
        catalog_seq=bundle.manifest.catalog_seq,
    )


def attribute_table(bundle: Bundle, removed: set[int]) -> AttributeTable:
    return AttributeTable(bundle.items, bundle.attribute_types, removed)


def freeze_heap(*, full: bool) -> None:
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


@dataclass
class ReloadResult:
    model_version: str
    previous_version: str | None
    reloaded: bool


def resolve_device(device: Device) -> str:
    """``auto``: the GPU when there is one."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class SnapshotHolder:
    """Holds the snapshot being served; loads CURRENT, reloads atomically, answers readiness.

    ``model_lock`` is held by the model work while it computes and by catalog writes while
    they mutate the live model; ``admin_lock`` serialises reloads and catalog writes."""

    def __init__(
        self,
        *,
        store: Path,
        device: Device,
        metrics: Metrics,
        rerank: Literal["bundle", "on", "off"] = "bundle",
    ) -> None:
        self.store = store
        self.device = resolve_device(device)
        self.rerank = rerank
        self.metrics = metrics
        self.snapshot: Snapshot | None = None
        self.load_error: str | None = None
        self.versions_served: list[str] = []
        self.model_lock = threading.Lock()
        self.admin_lock = asyncio.Lock()
        # called with the new version after this process published one (app.core.follow)
        self.on_publish: Callable[[str], Awaitable[None]] | None = None
        # applies the catalog table's changes to a loaded snapshot (app.core.catalog_apply)
        self.catch_up: Callable[[Snapshot], Snapshot] | None = None
        self.catalog_head = 0
        self._behind_since: float | None = None

    def start(self) -> None:
        """Load CURRENT; a failure is kept for /readyz, not raised."""
        try:
            self.install(self.load(None))
        except FusionrecError as exc:
            self.load_error = str(exc)
            log.error("no bundle loaded: %s", exc)

    def load(self, version: str | None) -> Snapshot:
        bundle = load_bundle(self.store, version, device=self.device)
        if self.rerank != "bundle":  # FUSIONREC_RERANK: the head forced on or off
            bundle.model.use_head = self.rerank == "on"
        snap = build_snapshot(bundle, device=self.device)
        if self.catch_up is not None:
            try:  # served with the catalog's changes from the start
                snap = self.catch_up(snap)
            except FusionrecError as exc:  # the database is down: the follower catches up
                log.warning("catalog changes not applied yet: %s", exc)
        return snap

    def install(self, snap: Snapshot, *, full_gc: bool = True) -> None:
        """Serve ``snap`` from now on (one reference swap)."""
        self.snapshot = snap
        self.load_error = None
        self.note_head(self.catalog_head)
        report_serving(self.store, snap.version)  # what `fusionrec gc` must keep
        freeze_heap(full=full_gc)
        if snap.version not in self.versions_served:
            self.versions_served.append(snap.version)
        self.metrics.model.info(
            {"version": snap.version, "index": snap.index_source, "index_kind": snap.index.kind}
        )
        self.metrics.index_size.set(snap.index.ntotal)
        self.metrics.catalog_size.set(snap.n_items)

    def note_head(self, head: int) -> None:
        """The catalog's head as last read; the lag counts from when it first ran ahead."""
        self.catalog_head = max(self.catalog_head, head)
        snap = self.snapshot
        behind = snap is not None and snap.catalog_seq < self.catalog_head
        if not behind:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()

    def catalog_lag_s(self) -> float:
        """Seconds this replica has been behind the catalog's head (0: caught up)."""
        since = self._behind_since
        return 0.0 if since is None else round(time.monotonic() - since, 3)

    def ready(self) -> Snapshot:
        """The snapshot to answer with; ``NotReadyError`` while none is loaded."""
        snap = self.snapshot
        if snap is None:
            raise NotReadyError(
                f"no bundle is loaded: {self.load_error or 'starting'}; "
                "publish one and POST /admin/reload"
            )
        return snap

    async def reload(self) -> ReloadResult:
        """Swap to the store's CURRENT bundle; a broken one is refused, the old keeps serving."""
        async with self.admin_lock:
            old = self.snapshot
            name = "?"
            try:
                name = store_mod.current_version(self.store)
                if old is not None and name == old.version:
                    return ReloadResult(name, name, False)
                snap = await asyncio.to_thread(self.load, name)
            except BundleError as exc:
                raise self._refused(name, exc, old) from exc
            self.install(snap)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving %s (was %s)", snap.version, old.version if old else None)
            return ReloadResult(snap.version, old.version if old else None, True)

    def _refused(self, name: str, exc: BundleError, old: Snapshot | None) -> ReloadRefusedError:
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
        return ReloadRefusedError(f"bundle refused: {exc}{keeps}")

    async def published(self, version: str) -> None:
        """Tell the other replicas (app.core.follow) that this process made ``version``
        CURRENT."""
        if self.on_publish is not None:
            await self.on_publish(version)
