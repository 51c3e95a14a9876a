"""The item index: one protocol over the FAISS index kinds, its files and their checks.

Scores are inner products ``<user_vector, item_vector>`` (the model's retrieval score).
Index ids are **catalog rows**: row ``k`` ↔ model index ``k + 1`` ↔ ``bundle.item_ids[k]``.
``removed`` holds catalog rows removed from the catalog: never returned, even after a
rebuild, until they are upserted again.

The kinds (``flat.py``, ``hnsw.py``, ``ivfpq.py``; flat and ivfpq share ``idmap.py``)
implement a few primitives — raw search, add, remove, the rows they hold, extra files — and
this base class does the rest the same way for all: argument checks, padding to ``k``,
per-query exclusions, replace-on-add, saving and verified loading. Files, under an optional
``prefix`` (``text_`` for the search index over text embeddings)::

    index.faiss      the FAISS index
    index.json       kind, tuned parameters, counts, removed rows (+ the kind's extras)
    index_rows.npy   hnsw only: label → row (−1 = tombstone)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import faiss
import numpy as np

from model_store.bundle.io import verify_files
from model_store.bundle.manifest import KindParams
from model_store.digest import sha256_file
from model_store.errors import BundleIntegrityError, ConfigError

BuiltKind = Literal["flat", "hnsw", "ivfpq"]
INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
INDEX_ROWS = "index_rows.npy"
META_FORMAT = 1


class IndexRef(Protocol):
    """What loading needs from a manifest's index section (``manifest.IndexInfo``)."""

    @property
    def kind(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def n_vectors(self) -> int: ...
    @property
    def files(self) -> dict[str, str]: ...


def file_names(prefix: str = "") -> tuple[str, str, str]:
    return prefix + INDEX_FILE, prefix + INDEX_META, prefix + INDEX_ROWS


def as_f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def as_rows(rows: Iterable[int] | np.ndarray) -> np.ndarray:
    values = rows if isinstance(rows, np.ndarray) else list(rows)
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


def empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.full((n, k), -np.inf, dtype=np.float32),
        np.full((n, k), -1, dtype=np.int64),
    )


def pad_to(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results padded with (−inf, −1) up to ``k`` columns."""
    if scores.shape[1] >= k:
        return scores, rows
    pad = ((0, 0), (0, k - scores.shape[1]))
    return (
        np.pad(scores, pad, constant_values=-np.inf),
        np.pad(rows, pad, constant_values=-1),
    )


def selector(exclude: set[int] | np.ndarray) -> Any:
    """A FAISS ``IDSelector`` that lets every id through but those of ``exclude``."""
    if isinstance(exclude, np.ndarray):
        banned = np.ascontiguousarray(exclude, dtype=np.int64)
    else:
        banned = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
    return faiss.IDSelectorNot(faiss.IDSelectorBatch(banned))


class ItemIndex(ABC):
    """A FAISS index over catalog rows with upsert, removal and filtered search."""

    kind: ClassVar[BuiltKind]

    def __init__(self, index: Any, params: KindParams, removed: set[int] | None) -> None:
        self.index: Any = index
        self.params = params
        self.removed: set[int] = set(removed or ())

    # ---- what each kind provides ----------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension of the item and query vectors."""

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of live (searchable) vectors."""

    @abstractmethod
    def rows(self) -> np.ndarray:
        """Catalog rows present in the index, sorted."""

    @abstractmethod
    def _search(
        self, q: np.ndarray, k: int, exclude: set[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k ≤ ntotal`` → (scores, rows), rows −1 where fewer results exist."""

    @abstractmethod
    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        """Add vectors of rows not in the index."""

    @abstractmethod
    def _remove(self, rows: np.ndarray) -> int:
        """Remove rows (absent ones ignored); how many vectors went."""

    @classmethod
    @abstractmethod
    def _from_files(
        cls, index: Any, meta: dict[str, Any], directory: Path, prefix: str, files: dict[str, str]
    ) -> ItemIndex:
        """Rebuild the object from its FAISS index, ``index.json`` and its extra files."""

    def _save_extra(self, directory: Path, prefix: str) -> tuple[list[str], dict[str, Any]]:
        """Extra files written and extra ``index.json`` fields (none by default)."""
        return [], {}

    @property
    def tombstones(self) -> int:
        return 0

    @property
    def overflow(self) -> int:
        return 0

    def widen(self, max_ef_search: int) -> bool:
        """Double the search breadth (HNSW efSearch up to ``max_ef_search``, IVF nprobe up to
        nlist); False when the kind has none or it is at its maximum."""
        return False

    # ---- shared behaviour -------------------------------------------------------------------
    def search(
        self, user_vectors: np.ndarray, k: int, *, exclude: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query (B, D) → (scores (B, k) float32, rows (B, k) int64).

        ``exclude`` is a set of catalog rows never to return (seen items). Missing results
        (fewer than ``k`` eligible items) have row −1 and score −inf.
        """
        q = as_f32(np.atleast_2d(user_vectors))
        if q.shape[1] != self.dim:
            raise ConfigError(f"query dim {q.shape[1]} ≠ index dim {self.dim}")
        k = int(k)
        if k <= 0 or self.ntotal == 0:
            return empty_result(len(q), max(k, 0))
        scores, rows = self._search(q, min(k, self.ntotal), exclude or None)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return pad_to(scores, rows.astype(np.int64), k)

    def search_excluding(
        self, user_vectors: np.ndarray, k: int, excludes: Sequence[set[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with its own set of excluded rows for each query: over-fetch
        by the largest exclusion, then drop each query's excluded rows."""
        q = as_f32(np.atleast_2d(user_vectors))
        k = int(k)
        n_search = min(k + max((len(e) for e in excludes), default=0), self.ntotal)
        scores, rows = self.search(q, n_search)
        out_s, out_r = empty_result(len(q), k)
        for b, ex in enumerate(excludes):
            ok = rows[b] >= 0
            if ex:
                e = np.sort(np.fromiter(ex, dtype=np.int64, count=len(ex)))
                at = np.minimum(np.searchsorted(e, rows[b]), len(e) - 1)
                ok &= e[at] != rows[b]
            keep = np.flatnonzero(ok)[:k]
            out_s[b, : len(keep)] = scores[b, keep]
            out_r[b, : len(keep)] = rows[b, keep]
        return out_s, out_r

    def add(self, vectors: np.ndarray, rows: Iterable[int] | np.ndarray) -> None:
        """Upsert: rows already present get their vector replaced."""
        x = as_f32(np.atleast_2d(vectors))
        r = as_rows(rows)
        if len(x) != len(r):
            raise ConfigError(f"{len(x)} vectors for {len(r)} rows")
        if len(r) == 0:
            return
        if x.shape[1] != self.dim:
            raise ConfigError(f"vector dim {x.shape[1]} ≠ index dim {self.dim}")
        if len(np.unique(r)) != len(r):
            raise ConfigError("duplicate rows in one add")
        self.remove(r, mark_removed=False)
        self._add(x, r)
        self.removed.difference_update(r.tolist())

    def remove(self, rows: Iterable[int] | np.ndarray, *, mark_removed: bool = True) -> int:
        """Remove rows (absent ones are ignored); return how many vectors were removed."""
        r = as_rows(rows)
        if mark_removed:
            self.removed.update(r.tolist())
        return self._remove(r) if len(r) else 0

    # ---- persistence ------------------------------------------------------------------------
    def save(self, directory: Path, *, prefix: str = "") -> dict[str, str]:
        """Write the index files into ``directory``; return {file name: sha256}."""
        f_index, f_meta, _ = file_names(prefix)
        faiss.write_index(self.index, str(directory / f_index))
        extra_files, extra_meta = self._save_extra(directory, prefix)
        meta = {
            "format": META_FORMAT,
            "kind": self.kind,
            "params": self.params.model_dump(by_alias=True),
            "dim": self.dim,
            "n_vectors": self.ntotal,
            "tombstones": self.tombstones,
            "removed_rows": sorted(self.removed),
            **extra_meta,
        }
        (directory / f_meta).write_text(json.dumps(meta, indent=1))
        return {n: sha256_file(directory / n) for n in [f_index, *extra_files, f_meta]}


def read_files(
    directory: Path, section: IndexRef | None, prefix: str = ""
) -> tuple[Any, dict[str, Any]]:
    """The verified FAISS index and ``index.json`` of a manifest's index ``section``."""
    f_index, f_meta, _ = file_names(prefix)
    if section is None:
        raise BundleIntegrityError(
            f"{directory}: the manifest has no index section; run `fusionrec index` first"
        )
    if f_index not in section.files or f_meta not in section.files:
        raise BundleIntegrityError(
            f"{directory}: the manifest's index section lists no {f_index}/{f_meta}"
        )
    verify_files(directory, section.files)
    try:
        meta: dict[str, Any] = json.loads((directory / f_meta).read_text())
        index = faiss.read_index(str(directory / f_index))
    except (RuntimeError, ValueError, OSError) as exc:
        raise BundleIntegrityError(f"{directory}: cannot read the index: {exc}") from exc
    if meta.get("kind") != section.kind:
        raise BundleIntegrityError(
            f"{directory}: index kind {meta.get('kind')!r} ≠ manifest {section.kind!r}"
        )
    return index, meta


def check_fits(
    item_index: ItemIndex,
    directory: Path,
    section: IndexRef,
    *,
    dim: int | None,
    n_items: int | None,
) -> None:
    """Refuse an index whose dimension, size or rows do not match the manifest and model."""
    checks: list[tuple[str, int, int]] = [
        ("dimension", item_index.dim, section.dim),
        ("vector count", item_index.ntotal, section.n_vectors),
    ]
    if dim is not None:
        checks.append(("dimension (model)", item_index.dim, dim))
    for what, got, expected in checks:
        if int(got) != int(expected):
            raise BundleIntegrityError(
                f"{directory}: index {what} is {got}, the manifest/model says "
                f"{expected}; the index does not belong to this bundle — rebuild it with "
                "`fusionrec index`"
            )
    if n_items is not None and item_index.ntotal:
        rows = item_index.rows()
        if rows[0] < 0 or rows[-1] >= n_items:
            raise BundleIntegrityError(
                f"{directory}: index holds row {int(rows[-1])} but the catalog has "
                f"{n_items} items; the index does not belong to this bundle"
            )


# ---- filtered search ----------------------------------------------------------------------

EXACT_MAX_ROWS = 65_536  # allowed rows up to this are scored exactly, not through the index
OVERFETCH_ROUNDS = 4


def exact_top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``scores`` (B, R) over candidate ``rows`` (R,) → (scores, rows) (B, k),
    best first, padded with (−inf, −1)."""
    n = scores.shape[1]
    if n == 0 or k <= 0:
        return empty_result(len(scores), max(k, 0))
    kk = min(k, n)
    part = (
        np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        if kk < n
        else np.tile(np.arange(n), (len(scores), 1))
    )
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    pos = np.take_along_axis(part, order, axis=1)
    out_s = np.take_along_axis(scores, pos, axis=1).astype(np.float32)
    out_r = rows[pos].astype(np.int64)
    out_r = np.where(np.isfinite(out_s), out_r, -1)
    return pad_to(np.where(out_r >= 0, out_s, -np.inf).astype(np.float32), out_r, k)


def search_allowed(
    index: ItemIndex | None,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray,
    exact: Callable[[np.ndarray], np.ndarray],
    *,
    exact_max: int = EXACT_MAX_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` among the ``allowed`` catalog rows only (a boolean mask over rows) →
    (scores (B, k), rows (B, k)), padded with (−inf, −1) when fewer rows are allowed.

    A non-allowed row is never returned. Up to ``exact_max`` allowed rows are scored
    exactly (``exact(rows)`` → (B, R) scores); above, the index is over-fetched by the
    inverse of the mask's selectivity, ×4 per round for at most ``OVERFETCH_ROUNDS``
    rounds, and whatever still has fewer than ``k`` results is scored exactly. Without an
    ``index`` every query is scored exactly.
    """
    q = as_f32(np.atleast_2d(queries))
    k = int(k)
    rows_ok = np.flatnonzero(allowed).astype(np.int64)
    if k <= 0 or len(rows_ok) == 0:
        return empty_result(len(q), max(k, 0))
    want = min(k, len(rows_ok))
    if index is not None and len(rows_ok) > exact_max and index.ntotal > 0:
        n = min(index.ntotal, int(np.ceil(want * index.ntotal / len(rows_ok) * 1.25)) + 16)
        for _ in range(OVERFETCH_ROUNDS):
            scores, rows = index.search(q, n)
            inside = (rows >= 0) & (rows < len(allowed))
            ok = inside & allowed[np.where(inside, rows, 0)]
            if (ok.sum(axis=1) >= want).all():
                out_s, out_r = empty_result(len(q), k)
                for b in range(len(q)):
                    keep = np.flatnonzero(ok[b])[:k]
                    out_s[b, : len(keep)] = scores[b, keep]
                    out_r[b, : len(keep)] = rows[b, keep]
                return out_s, out_r
            if n >= index.ntotal:
                break
            n = min(index.ntotal, n * 4)
    return exact_top(np.asarray(exact(rows_ok), dtype=np.float32), rows_ok, k)
