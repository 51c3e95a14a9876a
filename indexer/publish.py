"""Build or update a bundle's index and publish the result as a new bundle version.

Every operation here loads a verified bundle, changes it in memory and publishes a **new**
version (``model_store.bundle.staging`` → write files → ``publish``): unchanged files are
hard-linked from the parent, the manifest is the parent's with a new ``version``,
``created_at``, ``parent_version`` and an ``index`` section. ``CURRENT`` moves only after
every file is written and hashed; a failure midway leaves ``CURRENT`` on the old version and
no version directory behind.

The in-memory halves (``upsert_in_memory``, ``remove_in_memory``) are pure functions over a
loaded ``Bundle`` + ``ItemIndex``; the service calls them for ``POST /v1/items`` and then
``persist_update`` to publish.

**Search index.** For a catalog above ``IndexParams.text_index_min_items`` (default: the
same 65,536 items as exact item search) the build also writes ``text_index.faiss`` — an IVF-PQ index
over the LM text embeddings with one 8-bit code per dimension, tuned to the same recall floor
on sampled item texts — so ``POST /v1/search`` need not scan every embedding per query; the
service rescores its candidates exactly. It is updated with the item index on every upsert
and removal, and its manifest section is ``text_index`` (``null`` when the catalog is small
enough for the exact scan).

Concurrency: ``add_items``/``remove_items`` refuse to publish when ``CURRENT`` moved while
they worked (optimistic check) instead of silently dropping the other writer's change;
writers should still be serialised (one admin process).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from indexer.build import (
    INDEX_FILE,
    INDEX_META,
    INDEX_ROWS,
    IndexKind,
    IndexParams,
    ItemIndex,
    build_tuned,
    set_faiss_threads,
)
from indexer.encode import encode_catalog, encode_new_items, query_vectors
from model_store import bundle as bundle_mod
from model_store.bundle import Bundle, load_bundle
from model_store.errors import BundleError, BundleIntegrityError, DataError, NotFoundError

INDEX_FILES = (INDEX_FILE, INDEX_META, INDEX_ROWS)
TEXT_PREFIX = "text_"
TEXT_INDEX_FILES = tuple(TEXT_PREFIX + f for f in INDEX_FILES)
Progress = Callable[[int, int], None]  # (advance, total)


def load_index(bundle: Bundle) -> ItemIndex:
    """The bundle's index, verified against its manifest and its model (dim, catalog size)."""
    section = bundle.manifest.get("index")
    if not section:
        raise BundleError(
            f"bundle {bundle.version} has no index; run `fusionrec index --store "
            f"{bundle.path.parent}` first"
        )
    return ItemIndex.load(
        bundle.path, section, dim=bundle.model.out_dim, n_items=len(bundle.item_ids)
    )


def load_text_index(bundle: Bundle) -> ItemIndex | None:
    """The bundle's search index over text embeddings, or None when it has none."""
    section = bundle.manifest.get("text_index")
    if not section:
        return None
    return ItemIndex.load(
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


def build_text_index(
    bundle: Bundle,
    rows: np.ndarray,
    *,
    params: IndexParams,
    recall_floor: float,
    max_queries: int = 1000,
) -> tuple[ItemIndex, dict[str, Any]]:
    """IVF-PQ over the text embeddings of ``rows``, tuned to the floor → (index, stats).

    Recall is measured against exact cosine search with sampled item texts as queries (the
    real queries are short phrases, but they land in the same embedding space).
    """
    text = text_rows(bundle, rows)
    rng = np.random.default_rng(params.seed)
    queries = text[rng.choice(len(rows), size=min(max_queries, len(rows)), replace=False)]
    p = replace(params, pq_m=0, nprobe=max(params.nprobe, 32))
    index, recall, build_s, _ = build_tuned(
        text, rows, queries, kind="ivfpq", params=p, floor=recall_floor
    )
    return index, {
        "build_seconds": round(build_s, 3),
        "recall@10": round(recall["recall@10"], 5),
        "recall@100": round(recall["recall@100"], 5),
        "recall_floor": recall_floor,
        "recall_queries": len(queries),
        "recall_query_source": "sampled_item_texts",
    }


def _removed_rows(bundle: Bundle) -> set[int]:
    """Rows removed in earlier versions (index.json is covered by the bundle's file hashes)."""
    meta = bundle.path / INDEX_META
    if "index" not in bundle.manifest or not meta.is_file():
        return set()
    try:
        return {int(r) for r in json.loads(meta.read_text()).get("removed_rows", [])}
    except (ValueError, TypeError) as exc:
        raise BundleIntegrityError(f"{meta}: unreadable: {exc}") from exc


def _child_manifest(bundle: Bundle, version: str) -> dict[str, Any]:
    manifest = {k: v for k, v in bundle.manifest.items() if k != "files"}
    manifest.update(
        {
            "version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "parent_version": bundle.version,
            "libraries": bundle_mod.library_versions(),
        }
    )
    return manifest


def _publish_child(
    store: Path,
    bundle: Bundle,
    *,
    rewrite: Sequence[str],
    write: Callable[[Path], dict[str, Any]],
    expect_current: bool,
) -> Path:
    """Stage a child of ``bundle``: link unchanged files, ``write`` the rest, publish.

    ``write(staged)`` writes the new files and returns the manifest updates.
    """
    version = bundle_mod.new_version_name()
    skip = set(rewrite) | set(INDEX_FILES) | set(TEXT_INDEX_FILES)
    keep = [name for name in bundle.manifest.get("files", {}) if name not in skip]
    with bundle_mod.staging(store, version) as staged:
        bundle_mod.copy_into(bundle.path, staged, keep)
        manifest = _child_manifest(bundle, version)
        manifest.update(write(staged))
        if expect_current:
            now = bundle_mod.current_version(store)
            if now != bundle.version:
                raise BundleError(
                    f"CURRENT moved from {bundle.version} to {now} while this update ran; "
                    "nothing was published — retry on the new version"
                )
        return bundle_mod.publish(store, staged, manifest)


def _index_section(
    index: ItemIndex, staged: Path, files: dict[str, str], base: dict[str, Any]
) -> dict[str, Any]:
    return {
        **base,
        "kind": index.kind,
        "params": dict(index.params),
        "n_vectors": index.ntotal,
        "dim": index.dim,
        "tombstones": index.tombstones,
        "removed": len(index.removed),
        "memory_bytes": int(sum((staged / f).stat().st_size for f in files)),
        "files": files,
    }


def _text_index_section(
    text_index: ItemIndex | None, staged: Path, base: dict[str, Any]
) -> dict[str, Any] | None:
    if text_index is None:
        return None
    files = text_index.save(staged, prefix=TEXT_PREFIX)
    return _index_section(text_index, staged, files, base)


# ---- full build ---------------------------------------------------------------------------


@dataclass
class IndexResult:
    path: Path
    section: dict[str, Any]


def build_for_bundle(
    bundle: Bundle,
    *,
    kind: IndexKind = "auto",
    params: IndexParams | None = None,
    batch_size: int = 8192,
    device: str = "auto",
    recall_floor: float = 0.95,
    max_queries: int = 1000,
    progress: Progress | None = None,
) -> tuple[ItemIndex, dict[str, Any]]:
    """Encode the bundle's live catalog, build, tune to the recall floor → (index, stats)."""
    p = params or IndexParams()
    removed = _removed_rows(bundle)
    n = len(bundle.item_ids)
    rows = np.array([r for r in range(n) if r not in removed], dtype=np.int64)
    t0 = time.perf_counter()
    tick = None if progress is None else (lambda k: progress(k, len(rows)))
    vectors = encode_catalog(bundle, batch_size=batch_size, device=device, rows=rows, progress=tick)
    encode_s = time.perf_counter() - t0
    queries = query_vectors(bundle, max_users=max_queries, device=device)
    source = "user_histories" if bundle.histories else "sampled_items_plus_noise"
    t1 = time.perf_counter()
    index, recall, build_s, rebuilds = build_tuned(
        vectors, rows, queries, kind=kind, params=p, floor=recall_floor
    )
    index.removed = removed
    bundle.model.cpu()
    stats = {
        "build_seconds": round(build_s, 3),
        "encode_seconds": round(encode_s, 3),
        "build_and_tune_seconds": round(time.perf_counter() - t1, 3),
        "rebuilds": rebuilds,
        "recall@10": round(recall["recall@10"], 5),
        "recall@100": round(recall["recall@100"], 5),
        "recall_floor": recall_floor,
        "recall_queries": len(queries),
        "recall_query_source": source,
        "built_from_version": bundle.version,
        "requested_kind": kind,
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
) -> Path:
    """Index a bundle (default CURRENT) and publish the result as a new version; its path."""
    set_faiss_threads(threads)
    p = params or IndexParams()
    bundle = load_bundle(store, version)
    index, stats = build_for_bundle(
        bundle,
        kind=kind,
        params=p,
        batch_size=batch_size,
        device=device,
        recall_floor=recall_floor,
        max_queries=max_queries,
        progress=progress,
    )
    text_index: ItemIndex | None = None
    text_stats: dict[str, Any] = {}
    if index.ntotal > p.text_index_min_items:
        text_index, text_stats = build_text_index(
            bundle, index.rows(), params=p, recall_floor=recall_floor, max_queries=max_queries
        )
        text_index.removed = set(index.removed)

    def write(staged: Path) -> dict[str, Any]:
        files = index.save(staged)
        return {
            "index": _index_section(index, staged, files, stats),
            "text_index": _text_index_section(text_index, staged, text_stats),
        }

    return _publish_child(store, bundle, rewrite=(), write=write, expect_current=False)


# ---- incremental updates ------------------------------------------------------------------


@dataclass
class UpsertResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # catalog row of each input row


def _clean_rows(
    rows: Sequence[Mapping[str, object]],
    text_columns: Sequence[str],
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        raw = row.get("item_id")
        if raw is None or str(raw).strip() == "":
            raise DataError(f"item {i + 1}: missing 'item_id'")
        item_id = str(raw)
        if item_id in seen:
            raise DataError(f"item {i + 1}: duplicate item_id {item_id!r} in one update")
        seen.add(item_id)
        clean: dict[str, object] = {"item_id": item_id}
        for c in text_columns:
            if c in row:
                v = row[c]
                clean[c] = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
        out.append(clean)
    return out


def upsert_in_memory(
    bundle: Bundle,
    index: ItemIndex,
    rows: Sequence[Mapping[str, object]],
    *,
    device: str = "auto",
    text_index: ItemIndex | None = None,
) -> UpsertResult:
    """Add new items (text path only) and re-encode edited ones, in ``bundle`` and ``index``.

    Each row has ``item_id`` and text columns; columns a row leaves out keep their old value
    (new items: empty). New ids are appended to the catalog (``has_id = 0``, popularity 0);
    a previously removed id comes back. Mutates ``bundle`` (model buffers, ``item_ids``,
    ``items``) and ``index``; on error nothing has changed.
    """
    cols = bundle.text_columns
    clean = _clean_rows(rows, cols)
    if not clean:
        return UpsertResult()
    index_of = bundle.index_of()
    items = bundle.items
    merged: list[dict[str, object]] = []
    for row in clean:
        k = index_of.get(str(row["item_id"]))
        base: dict[str, object] = (
            {c: items.at[k - 1, c] for c in cols} if k is not None else {c: "" for c in cols}
        )
        full = {**base, **row}
        if k is None and not any(str(full[c]).strip() for c in cols):
            raise DataError(
                f"new item {row['item_id']!r} has no text in any of the columns {cols}; "
                "a new item is encoded from its text alone"
            )
        merged.append(full)
    text = torch.from_numpy(encode_new_items(bundle, merged, device=device))
    result = UpsertResult()
    model = bundle.model
    new_pos = [i for i, r in enumerate(merged) if str(r["item_id"]) not in index_of]
    old_pos = [i for i, r in enumerate(merged) if str(r["item_id"]) in index_of]
    # all LM work is done: from here on only cheap, non-failing in-memory updates
    if old_pos:
        idx = torch.tensor([index_of[str(merged[i]["item_id"])] for i in old_pos])
        model.replace_text(idx, text[old_pos])
        for i in old_pos:
            k = index_of[str(merged[i]["item_id"])]
            for c in cols:
                items.at[k - 1, c] = str(merged[i][c])
    if new_pos:
        start = len(bundle.item_ids)
        model.extend_catalog(text[new_pos])
        new_frame = pd.DataFrame([{c: merged[i][c] for c in ["item_id", *cols]} for i in new_pos])
        bundle.items = pd.concat([items, new_frame], ignore_index=True)
        for j, i in enumerate(new_pos):
            bundle.item_ids.append(str(merged[i]["item_id"]))
            index_of[str(merged[i]["item_id"])] = start + j + 1
    result.rows = [index_of[str(r["item_id"])] - 1 for r in merged]
    result.added = [str(merged[i]["item_id"]) for i in new_pos]
    result.updated = [str(merged[i]["item_id"]) for i in old_pos]
    vectors = encode_catalog(bundle, rows=np.asarray(result.rows))
    index.add(vectors, result.rows)
    if text_index is not None:
        text_index.add(text_rows(bundle, result.rows), result.rows)
    return result


def remove_in_memory(
    bundle: Bundle, index: ItemIndex, ids: Sequence[str], *, text_index: ItemIndex | None = None
) -> list[int]:
    """Remove items from the index and mark them removed; their catalog rows stay.

    Unknown ids raise NotFoundError (naming them) and nothing changes. Returns the rows.
    """
    index_of = bundle.index_of()
    unknown = [i for i in ids if str(i) not in index_of]
    if unknown:
        raise NotFoundError(f"unknown item id(s) {unknown[:10]}; nothing was removed")
    rows = [index_of[str(i)] - 1 for i in ids]
    index.remove(rows)
    if text_index is not None:
        text_index.remove(rows)
    return rows


def persist_update(
    store: Path,
    bundle: Bundle,
    index: ItemIndex,
    *,
    note: dict[str, Any],
    expect_current: bool = True,
    text_index: ItemIndex | None = None,
) -> Path:
    """Publish ``bundle`` + ``index`` (+ ``text_index``) after in-memory updates as a child.

    A bundle with a search index must be given it (``load_text_index``) so that it follows
    the catalog; leaving it out drops it from the child (search then scans exactly).
    """
    parent_section = dict(bundle.manifest.get("index", {}))
    parent_text = {
        k: v for k, v in (bundle.manifest.get("text_index") or {}).items() if k != "files"
    }
    history = list(parent_section.get("update_log", []))[-19:]
    history.append({"version_parent": bundle.version, **note})

    def write(staged: Path) -> dict[str, Any]:
        bundle_mod.save_catalog(staged / bundle_mod.CATALOG_FILE, bundle.model)
        bundle.items.to_parquet(staged / bundle_mod.ITEMS_FILE, index=False)
        files = index.save(staged)
        base = {k: v for k, v in parent_section.items() if k not in ("files", "update_log")}
        base["updates_since_build"] = int(base.get("updates_since_build", 0)) + 1
        base["update_log"] = history
        return {
            "index": _index_section(index, staged, files, base),
            "text_index": _text_index_section(text_index, staged, parent_text),
            "item_vocab_hash": bundle_mod.vocab_hash(bundle.item_ids),
            "catalog": {
                "n_items": len(bundle.item_ids),
                "n_removed": len(index.removed),
                "n_added_after_training": len(bundle.item_ids)
                - int(bundle.manifest.get("data", {}).get("n_items", 0)),
                "n_text_only": int((~bundle.model.has_id[1:]).sum()),
            },
        }

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
    result = upsert_in_memory(bundle, index, rows, device=device, text_index=text_index)
    return persist_update(
        store,
        bundle,
        index,
        note={"op": "upsert", "added": len(result.added), "updated": len(result.updated)},
        expect_current=version is None,
        text_index=text_index,
    )


def remove_items(store: Path, ids: Sequence[str], *, version: str | None = None) -> Path:
    """Remove items from a bundle's index (rows stay, marked removed); publish a new version."""
    bundle = load_bundle(store, version)
    index = load_index(bundle)
    text_index = load_text_index(bundle)
    rows = remove_in_memory(bundle, index, ids, text_index=text_index)
    return persist_update(
        store,
        bundle,
        index,
        note={"op": "remove", "removed": len(rows)},
        expect_current=version is None,
        text_index=text_index,
    )


def read_items_file(path: Path) -> list[dict[str, object]]:
    """Rows of a CSV/Parquet file with ``item_id`` + text columns."""
    from model_store.data import read_table

    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise DataError(f"{path}: items file must end in .csv or .parquet")
    frame, found = read_table(path.with_suffix(""))
    if "item_id" not in frame.columns:
        raise DataError(f"{found}: missing column 'item_id'; columns: {list(frame.columns)}")
    frame = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in frame.to_dict(orient="records")]
