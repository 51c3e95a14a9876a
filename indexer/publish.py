"""Build or update a bundle's index and publish the result as a new bundle version.

Every operation here loads a verified bundle, changes it in memory and publishes a **new**
version (``store.staging`` → write files → ``bundle.publish``): unchanged files are
hard-linked from the parent, the manifest is the parent's with a new ``version``,
``created_at``, ``parent_version`` and index sections. ``CURRENT`` moves only after every
file is written and hashed; a failure midway leaves ``CURRENT`` on the old version and no
version directory behind.

**Search index.** For a catalog above ``IndexParams.text_index_min_items`` (default: the
same 65,536 items as exact item search) the build also writes ``text_index.faiss`` — an
IVF-PQ index over the LM text embeddings with one 8-bit code per dimension, tuned to the
same recall floor on sampled item texts — so ``POST /v1/search`` need not scan every
embedding per query; the service rescores its candidates exactly. It follows the item
index on every upsert and removal; its manifest section is ``text_index`` (``null`` when
the catalog is small enough for the exact scan).

Concurrency: ``add_items``/``remove_items`` refuse to publish when ``CURRENT`` moved while
they worked (optimistic check) instead of silently dropping the other writer's change;
writers should still be serialised (one admin process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer import catalog
from indexer.build import IndexKind, IndexParams, build_tuned, read_index, set_faiss_threads
from indexer.encode import encode_catalog, query_vectors
from indexer.index import ItemIndex, file_names
from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.bundle.io import Bundle, load_bundle
from model_store.bundle.manifest import CatalogInfo, IndexInfo, Manifest
from model_store.errors import BundleError, DataError

TEXT_PREFIX = "text_"
INDEX_FILES = file_names()
TEXT_INDEX_FILES = file_names(TEXT_PREFIX)
UPDATE_LOG = 20
Progress = Callable[[int, int], None]  # (advance, total)


@dataclass(frozen=True)
class BuildOptions:
    """How a full build encodes the catalog and builds, tunes and checks its indexes."""

    kind: IndexKind = "auto"
    params: IndexParams = field(default_factory=IndexParams)
    batch_size: int = 8192  # items per encode batch
    device: str = "auto"
    recall_floor: float = 0.95  # refuse an index below this recall@100
    max_queries: int = 1000  # queries of the recall measurement


def load_index(bundle: Bundle) -> ItemIndex:
    """The bundle's index, verified against its manifest and its model (dim, catalog size)."""
    if bundle.manifest.index is None:
        raise BundleError(
            f"bundle {bundle.version} has no index; run `fusionrec index --store "
            f"{bundle.path.parent}` first"
        )
    return read_index(
        bundle.path, bundle.manifest.index, dim=bundle.model.out_dim, n_items=len(bundle.item_ids)
    )


def load_text_index(bundle: Bundle) -> ItemIndex | None:
    """The bundle's search index over text embeddings, or None when it has none."""
    section = bundle.manifest.text_index
    if section is None:
        return None
    return read_index(
        bundle.path,
        section,
        dim=int(bundle.model.text_emb.shape[1]),
        n_items=len(bundle.item_ids),
        prefix=TEXT_PREFIX,
    )


def text_rows(bundle: Bundle, rows: np.ndarray | Sequence[int]) -> np.ndarray:
    """The normalised LM text embeddings of catalog ``rows`` (R, T) float32."""
    idx = torch.as_tensor(np.asarray(rows, dtype=np.int64) + 1)
    return bundle.model.text_emb[idx.to(bundle.model.text_emb.device)].float().cpu().numpy()


def _section(index: ItemIndex, staged: Path, files: dict[str, str], **stats: Any) -> IndexInfo:
    return IndexInfo.model_validate(
        {
            **stats,
            "kind": index.kind,
            "params": index.params.model_copy(),
            "n_vectors": index.ntotal,
            "dim": index.dim,
            "tombstones": index.tombstones,
            "removed": len(index.removed),
            "memory_bytes": int(sum((staged / f).stat().st_size for f in files)),
            "files": files,
        }
    )


def _recall_stats(recall: dict[str, float], floor: float, n: int, source: str) -> dict[str, Any]:
    return {
        "recall@10": round(recall["recall@10"], 5),
        "recall@100": round(recall["recall@100"], 5),
        "recall_floor": floor,
        "recall_queries": n,
        "recall_query_source": source,
    }


def _publish_child(
    store: Path,
    bundle: Bundle,
    *,
    rewrite: Sequence[str],
    write: Callable[[Path, Manifest], Manifest],
    expect_current: bool,
    make_current: bool = True,
) -> Path:
    """Stage a child of ``bundle``: link unchanged files, ``write`` the rest, publish.

    ``write(staged, manifest)`` writes the new files and returns the updated manifest.
    """
    version = store_mod.new_version_name()
    skip = set(rewrite) | set(INDEX_FILES) | set(TEXT_INDEX_FILES)
    keep = [name for name in bundle.manifest.files if name not in skip]
    with store_mod.staging(store, version) as staged:
        store_mod.copy_into(bundle.path, staged, keep)
        manifest = write(staged, bundle_mod.child_manifest(bundle.manifest, version))
        if expect_current:
            now = store_mod.current_version(store)
            if now != bundle.version:
                raise BundleError(
                    f"CURRENT moved from {bundle.version} to {now} while this update ran; "
                    "nothing was published — retry on the new version"
                )
        return bundle_mod.publish(store, staged, manifest, make_current=make_current)


# ---- full build ---------------------------------------------------------------------------


def build_text_index(
    bundle: Bundle, rows: np.ndarray, options: BuildOptions
) -> tuple[ItemIndex, dict[str, Any]]:
    """IVF-PQ over the text embeddings of ``rows``, tuned to the floor → (index, stats).

    Recall is measured against exact cosine search with sampled item texts as queries (the
    real queries are short phrases, but they land in the same embedding space).
    """
    params, floor = options.params, options.recall_floor
    text = text_rows(bundle, rows)
    rng = np.random.default_rng(params.seed)
    queries = text[rng.choice(len(rows), size=min(options.max_queries, len(rows)), replace=False)]
    p = replace(params, pq_m=0, nprobe=max(params.nprobe, 32))
    index, recall, build_s, _ = build_tuned(
        text, rows, queries, kind="ivfpq", params=p, floor=floor
    )
    stats = _recall_stats(recall, floor, len(queries), "sampled_item_texts")
    return index, {"build_seconds": round(build_s, 3), **stats}


def live_rows(bundle: Bundle) -> np.ndarray:
    """The catalog rows an index of ``bundle`` holds: all but those its index removed."""
    removed = set(load_index(bundle).removed) if bundle.manifest.index is not None else set()
    return np.array([r for r in range(len(bundle.item_ids)) if r not in removed], np.int64)


def encode_share(
    store: Path, *, version: str | None = None, batch_size: int = 8192, device: str = "auto"
) -> None:
    """A rank > 0's part of ``index_bundle`` under torchrun: encode its block of the live
    rows for rank 0 (``indexer.encode``); rank 0 builds and publishes."""
    bundle = load_bundle(store, version)
    encode_catalog(bundle, batch_size=batch_size, device=device, rows=live_rows(bundle))


def build_for_bundle(
    bundle: Bundle, options: BuildOptions, progress: Progress | None = None
) -> tuple[ItemIndex, dict[str, Any]]:
    """Encode the bundle's live catalog, build, tune to the recall floor → (index, stats)."""
    o = options
    parent = load_index(bundle) if bundle.manifest.index is not None else None
    removed = set(parent.removed) if parent is not None else set()
    rows = live_rows(bundle)
    t0 = time.perf_counter()
    tick = None if progress is None else (lambda k: progress(k, len(rows)))
    vectors = encode_catalog(
        bundle, batch_size=o.batch_size, device=o.device, rows=rows, progress=tick
    )
    encode_s = time.perf_counter() - t0
    queries = query_vectors(bundle, max_users=o.max_queries, device=o.device)
    source = "user_histories" if bundle.histories else "sampled_items_plus_noise"
    t1 = time.perf_counter()
    index, recall, build_s, rebuilds = build_tuned(
        vectors, rows, queries, kind=o.kind, params=o.params, floor=o.recall_floor
    )
    index.removed = removed
    bundle.model.cpu()
    stats = {
        "build_seconds": round(build_s, 3),
        "encode_seconds": round(encode_s, 3),
        "build_and_tune_seconds": round(time.perf_counter() - t1, 3),
        "rebuilds": rebuilds,
        **_recall_stats(recall, o.recall_floor, len(queries), source),
        "built_from_version": bundle.version,
        "requested_kind": o.kind,
        "updates_since_build": 0,
    }
    return index, stats


def index_bundle(
    store: Path,
    *,
    version: str | None = None,
    kind: IndexKind = "auto",
    params: IndexParams | None = None,
    batch_size: int = 8192,
    device: str = "auto",
    recall_floor: float = 0.95,
    max_queries: int = 1000,
    threads: int | None = None,
    progress: Progress | None = None,
    make_current: bool = True,
) -> Path:
    """Index a bundle (default CURRENT) and publish the result as a new version; its path.
    ``make_current=False`` leaves CURRENT alone (the caller moves it when it is ready)."""
    set_faiss_threads(threads)
    options = BuildOptions(
        kind, params or IndexParams(), batch_size, device, recall_floor, max_queries
    )
    bundle = load_bundle(store, version)
    index, stats = build_for_bundle(bundle, options, progress)
    text_index: ItemIndex | None = None
    text_stats: dict[str, Any] = {}
    if index.ntotal > options.params.text_index_min_items:
        text_index, text_stats = build_text_index(bundle, index.rows(), options)
        text_index.removed = set(index.removed)

    def write(staged: Path, manifest: Manifest) -> Manifest:
        section = _section(index, staged, index.save(staged), **stats)
        text_section = None
        if text_index is not None:
            files = text_index.save(staged, prefix=TEXT_PREFIX)
            text_section = _section(text_index, staged, files, **text_stats)
        return manifest.model_copy(update={"index": section, "text_index": text_section})

    return _publish_child(
        store, bundle, rewrite=(), write=write, expect_current=False, make_current=make_current
    )


# ---- incremental updates ------------------------------------------------------------------


def persist_update(
    store: Path,
    bundle: Bundle,
    index: ItemIndex,
    *,
    note: dict[str, Any],
    expect_current: bool = True,
    text_index: ItemIndex | None = None,
    catalog_seq: int | None = None,
) -> Path:
    """Publish ``bundle`` + ``index`` (+ ``text_index``) after in-memory updates as a child
    (``catalog_seq``: the catalog table's sequence it now includes, ``indexer.compact``).

    A bundle with a search index must be given it (``load_text_index``) so that it follows
    the catalog; leaving it out drops it from the child (search then scans exactly).
    """
    parent = bundle.manifest.index
    if parent is None:  # the service's exact in-memory index of an unindexed bundle
        stats = _recall_stats({"recall@10": 1.0, "recall@100": 1.0}, 1.0, 0, "exact search")
        parent = _section(index, bundle.path, {}, build_seconds=0.0, **stats)
    parent_text = bundle.manifest.text_index
    log = [*parent.update_log[-(UPDATE_LOG - 1) :], {"version_parent": bundle.version, **note}]

    def write(staged: Path, manifest: Manifest) -> Manifest:
        bundle_mod.save_catalog(staged / bundle_mod.CATALOG_FILE, bundle.model)
        bundle.items.to_parquet(staged / bundle_mod.ITEMS_FILE, index=False)
        keep = parent.model_dump(by_alias=True, exclude={"files", "update_log"})
        keep.update(updates_since_build=parent.updates_since_build + 1, update_log=log)
        section = _section(index, staged, index.save(staged), **keep)
        text_section = None
        if text_index is not None and parent_text is not None:
            files = text_index.save(staged, prefix=TEXT_PREFIX)
            text_keep = parent_text.model_dump(by_alias=True, exclude={"files"})
            text_section = _section(text_index, staged, files, **text_keep)
        info = CatalogInfo(
            n_items=len(bundle.item_ids),
            n_removed=len(index.removed),
            n_added_after_training=len(bundle.item_ids) - manifest.data.n_items,
            n_text_only=int((~bundle.model.has_id[1:]).sum()),
        )
        return manifest.model_copy(
            update={
                "index": section,
                "text_index": text_section,
                "item_vocab_hash": bundle_mod.vocab_hash(bundle.item_ids),
                "catalog": info,
                "catalog_seq": manifest.catalog_seq if catalog_seq is None else catalog_seq,
            }
        )

    return _publish_child(
        store,
        bundle,
        rewrite=(bundle_mod.CATALOG_FILE, bundle_mod.ITEMS_FILE),
        write=write,
        expect_current=expect_current,
    )


def add_items(
    store: Path,
    rows: Sequence[Mapping[str, object]],
    *,
    version: str | None = None,
    device: str = "auto",
) -> Path:
    """Upsert items into a bundle's catalog and index; publish a new version."""
    bundle = load_bundle(store, version)
    index = load_index(bundle)
    text_index = load_text_index(bundle)
    applied = catalog.upsert_items(bundle, index, rows, device=device, text_index=text_index)
    note = {"op": "upsert", "added": len(applied.added), "updated": len(applied.updated)}
    return persist_update(
        store, bundle, index, note=note, expect_current=version is None, text_index=text_index
    )


def remove_items(store: Path, ids: Sequence[str], *, version: str | None = None) -> Path:
    """Remove items from a bundle's index (rows stay, marked removed); publish a new version."""
    bundle = load_bundle(store, version)
    index = load_index(bundle)
    text_index = load_text_index(bundle)
    removed = catalog.remove_items(bundle, index, ids, text_index=text_index)
    note = {"op": "remove", "removed": len(removed.rows)}
    return persist_update(
        store, bundle, index, note=note, expect_current=version is None, text_index=text_index
    )


def read_items_file(path: Path) -> list[dict[str, object]]:
    """Rows of a CSV/Parquet file with ``item_id`` + text columns; every value a string
    (a file's text columns carry no type) or None where empty."""
    from model_store.data.dataset import read_table

    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise DataError(f"{path}: items file must end in .csv or .parquet")
    frame, found = read_table(path.with_suffix(""))
    if "item_id" not in frame.columns:
        raise DataError(f"{found}: missing column 'item_id'; columns: {list(frame.columns)}")
    text = frame.astype(str).where(frame.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in text.to_dict(orient="records")]
