"""FAISS indexes over item vectors: choice of kind, tuning to a recall floor, add/remove.

Scores are inner products ``<user_vector, item_vector>`` (the model's retrieval score).
Index ids are **catalog rows**: row ``k`` ↔ model index ``k + 1`` ↔ ``bundle.item_ids[k]``.

Kinds and how each supports incremental updates:

* ``flat``  — exact search, ``IndexIDMap2(IndexFlatIP)``; add/remove by row id.
* ``ivfpq`` — ``IndexIVFPQ`` carrying the rows as its own ids (IVF stores ids natively;
  wrapping it in ``IndexIDMap2`` would corrupt the id map on ``remove_ids``, because IVF does
  not renumber its internal ids the way ``IndexFlat`` does); add/remove by row id.
* ``hnsw``  — ``IndexHNSWFlat`` cannot delete. Each vector gets a sequential *label*;
  ``label_rows`` maps labels to rows. Removing or replacing an item turns its old label into
  a **tombstone** (``label_rows[label] = -1``), filtered out at search time with an
  ``IDSelector``. Tombstones cost memory and some search quality, so a periodic full rebuild
  (``fusionrec index``) compacts them; the build reports how many there are.

  The graph is built in **L2 over vectors augmented to one common norm** (``metric
  "l2_mips"``), not on raw inner products: inner product is not a metric (an item can score
  higher against another item than against itself), and an HNSW graph built on it leaves
  small-norm items unreachable — on trained item vectors of a 1M catalog recall@100 stopped at
  0.934 however large efSearch grew. Each item ``x`` gets an extra coordinate
  ``sqrt(R² − |x|²)`` (``R`` = the largest norm at build time) and each query a 0, so
  ``|q' − x'|² = |q|² + R² − 2·q·x`` ranks exactly like ``q·x`` (Bachrach et al., "Speeding up
  the Xbox recommender system using a Euclidean transformation for inner-product spaces",
  RecSys 2014). Returned scores are recomputed exactly from the stored vectors. An item added
  later with a norm above ``R`` cannot be placed on that sphere: it is kept in the graph but
  also listed as *overflow* and scanned exactly on every search (a rebuild absorbs it).
  Indexes built before this (no ``metric`` in their parameters) keep searching on inner
  products.

``auto`` picks ``flat`` up to ``IndexParams.flat_max_items`` live items, ``ivfpq`` when the
float vectors would exceed ``IndexParams.memory_budget_bytes``, ``hnsw`` otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np
import torch

from model_store.bundle import sha256_file, verify_files
from model_store.errors import BundleIntegrityError, ConfigError, IndexBuildError

# faiss's bundled type stubs lag its SWIG API (SearchParametersHNSW, kwargs, subclass fields)
_faiss: Any = faiss

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
BuiltKind = Literal["flat", "hnsw", "ivfpq"]
KINDS: tuple[IndexKind, ...] = ("auto", "flat", "hnsw", "ivfpq")
INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
INDEX_ROWS = "index_rows.npy"  # hnsw only: label → row (−1 = tombstone)
META_FORMAT = 1
RECALL_KS = (10, 100)
DENSE_MAX_ITEMS = 65_536  # flat indexes up to this size score a batch with one matmul


def _names(prefix: str) -> tuple[str, str, str]:
    return prefix + INDEX_FILE, prefix + INDEX_META, prefix + INDEX_ROWS


@dataclass
class IndexParams:
    """Build and search parameters; the tuned values are recorded in the manifest."""

    # exact search up to the size the service scores with one dense matmul per batch; above
    # it an exact FAISS scan per query costs more than HNSW at the recall floor (200k items:
    # 652 vs 1,591 cache-hit req/s, docs/BENCHMARKS.md)
    flat_max_items: int = DENSE_MAX_ITEMS
    # catalogs above this also get an ANN index over the text embeddings (POST /v1/search;
    # 200k items: 130 vs 195 req/s)
    text_index_min_items: int = DENSE_MAX_ITEMS
    memory_budget_bytes: int = 4 << 30  # float vectors above this → ivfpq
    hnsw_m: int = 32
    hnsw_metric: Literal["l2_mips", "ip"] = "l2_mips"  # see the module docstring
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 0  # 0 = about 2·√N inverted lists
    nprobe: int = 16
    # 0 = one 8-bit sub-quantizer per dimension (4× smaller than float32): on clustered
    # data dim/2 sub-quantizers cap recall@100 near 0.87, below the default floor
    pq_m: int = 0
    pq_nbits: int = 8
    train_points_per_list: int = 40
    max_ef_search: int = 4096
    # when efSearch tops out below the floor, rebuild HNSW with M and efConstruction doubled
    # (while M stays ≤ max_hnsw_m)
    max_hnsw_m: int = 64
    seed: int = 0


def set_faiss_threads(n: int | None = None) -> int:
    """Set FAISS's OpenMP threads from ``n`` or ``FUSIONREC_FAISS_THREADS``; return the count.

    A server answering many small queries concurrently usually wants 1 thread per query;
    an offline build wants all cores (the default when neither is set).
    """
    env = os.environ.get("FUSIONREC_FAISS_THREADS")
    if n is None and env:
        try:
            n = int(env)
        except ValueError as exc:
            raise ConfigError(f"FUSIONREC_FAISS_THREADS={env!r} must be an integer") from exc
    if n is not None:
        if n < 1:
            raise ConfigError(f"faiss threads={n} must be >= 1")
        faiss.omp_set_num_threads(n)
    return int(faiss.omp_get_max_threads())


def choose_kind(kind: IndexKind, n: int, dim: int, params: IndexParams) -> BuiltKind:
    if kind not in KINDS:
        raise ConfigError(f"index kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    if n <= params.flat_max_items:
        return "flat"
    if n * dim * 4 > params.memory_budget_bytes:
        return "ivfpq"
    return "hnsw"


def _as_f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _as_rows(rows: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.asarray(
            list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64
        ).reshape(-1)
    )


def _augment(x: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) → (N, D+1) on the sphere of ``radius``; also the mask of norms above it."""
    sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    extra = np.sqrt(np.maximum(radius * radius - sq, 0.0))
    return (
        np.ascontiguousarray(np.hstack([x, extra[:, None].astype(np.float32)])),
        sq > radius * radius * (1 + 1e-6),
    )


def _pq_m(dim: int, wanted: int) -> int:
    m = wanted or dim
    while dim % m:
        m -= 1
    return m


def _dense_topk_eager(
    q: torch.Tensor, xb: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``q @ xb.T`` with entries (rows[i], cols[i]) excluded → (scores, positions)."""
    dense = q @ xb.T
    dense.index_put_((rows, cols), torch.full((1,), float("-inf")))
    return dense.topk(k, dim=1)


@functools.cache
def _dense_topk() -> Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]
]:
    """``_dense_topk_eager`` compiled with TorchScript: one call that runs without the GIL
    (eager would take the GIL back between its ops while the service's event loop wants it;
    see ``FusedModel.serving_encoder``). Eager where TorchScript is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation warning
            return torch.jit.script(_dense_topk_eager)
    except Exception:  # any failure means: run it eagerly
        return _dense_topk_eager


class ItemIndex:
    """A FAISS index over catalog rows with add/remove and filtered search.

    ``removed`` holds catalog rows that were removed from the catalog (never returned, even
    after a rebuild, until they are upserted again).
    """

    def __init__(
        self,
        index: Any,
        kind: BuiltKind,
        params: dict[str, Any],
        *,
        label_rows: np.ndarray | None = None,
        removed: set[int] | None = None,
        overflow: Iterable[int] = (),
    ) -> None:
        self.index: Any = index  # IndexIDMap2(IndexFlatIP) | IndexHNSWFlat | IndexIVFPQ
        self.kind: BuiltKind = kind
        self.params = dict(params)
        self.removed: set[int] = set(removed or ())
        self._label_rows = (
            np.zeros(0, dtype=np.int64)
            if label_rows is None
            else np.asarray(label_rows, dtype=np.int64)
        )
        self._row_label: dict[int, int] = {}
        self._dead: np.ndarray | None = None  # cached tombstone labels (hnsw)
        # hnsw l2_mips: labels whose norm exceeds the radius, scanned exactly on each search
        self._overflow = np.asarray(sorted(overflow), dtype=np.int64)
        self._xb: np.ndarray | None = None  # zero-copy view of the graph's stored vectors
        self._flat: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None  # flat arrays
        if kind == "hnsw":
            live = np.flatnonzero(self._label_rows >= 0)
            self._row_label = dict(zip(self._label_rows[live].tolist(), live.tolist(), strict=True))
        self._apply_search_params()

    # ---- properties -------------------------------------------------------------------------
    @property
    def mips(self) -> bool:
        """True for an HNSW graph built in L2 over norm-augmented vectors."""
        return self.kind == "hnsw" and self.params.get("metric") == "l2_mips"

    @property
    def dim(self) -> int:
        """Dimension of the item and query vectors (the graph's minus the MIPS coordinate)."""
        return int(self.index.d) - (1 if self.mips else 0)

    @property
    def overflow(self) -> int:
        """Live items above the MIPS radius (searched exactly until a rebuild)."""
        if not len(self._overflow):
            return 0
        return int((self._label_rows[self._overflow] >= 0).sum())

    @property
    def ntotal(self) -> int:
        """Number of live (searchable) vectors."""
        if self.kind == "hnsw":
            return len(self._row_label)
        return int(self.index.ntotal)

    @property
    def tombstones(self) -> int:
        return int((self._label_rows < 0).sum()) if self.kind == "hnsw" else 0

    def rows(self) -> np.ndarray:
        """Catalog rows present in the index, sorted."""
        if self.kind == "hnsw":
            return np.sort(np.fromiter(self._row_label, dtype=np.int64, count=len(self._row_label)))
        if self.kind == "flat":
            return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        ivf: Any = faiss.extract_index_ivf(self.index)
        invlists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if invlists.list_size(i)
        ]
        return (
            np.sort(np.concatenate(parts).astype(np.int64))
            if parts
            else np.zeros(0, dtype=np.int64)
        )

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["efSearch"])
        elif self.kind == "ivfpq":
            self.index.nprobe = int(self.params["nprobe"])

    def set_search_param(self, value: int) -> None:
        """Set efSearch (hnsw) or nprobe (ivfpq); flat has nothing to tune."""
        if self.kind == "hnsw":
            self.params["efSearch"] = int(value)
        elif self.kind == "ivfpq":
            self.params["nprobe"] = int(min(value, self.index.nlist))
        self._apply_search_params()

    # ---- search -----------------------------------------------------------------------------
    def _search_parameters(self, exclude: set[int] | None) -> Any:
        banned: np.ndarray
        if self.kind == "hnsw":
            if self._dead is None:
                self._dead = np.flatnonzero(self._label_rows < 0).astype(np.int64)
            dead = self._dead
            ex = [self._row_label[r] for r in exclude or () if r in self._row_label]
            banned = np.concatenate([dead, np.asarray(ex, dtype=np.int64)])
        else:
            banned = _as_rows(sorted(exclude)) if exclude else np.zeros(0, dtype=np.int64)
        if len(banned) == 0:
            return None
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(banned, np.int64)))
        if self.kind == "hnsw":
            return _faiss.SearchParametersHNSW(efSearch=int(self.params["efSearch"]), sel=sel)
        if self.kind == "ivfpq":
            return _faiss.SearchParametersIVF(nprobe=int(self.params["nprobe"]), sel=sel)
        return _faiss.SearchParameters(sel=sel)

    def search(
        self,
        user_vectors: np.ndarray,
        k: int,
        *,
        exclude: set[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query (B, D) → (scores (B, k) float32, rows (B, k) int64).

        ``exclude`` is a set of catalog rows never to return (seen items). Missing results
        (fewer than ``k`` eligible items) have row −1 and score −inf.
        """
        q = _as_f32(np.atleast_2d(user_vectors))
        if q.shape[1] != self.dim:
            raise ConfigError(f"query dim {q.shape[1]} ≠ index dim {self.dim}")
        k = int(k)
        if k <= 0 or self.ntotal == 0:
            return (
                np.full((len(q), max(k, 0)), -np.inf, dtype=np.float32),
                np.full((len(q), max(k, 0)), -1, dtype=np.int64),
            )
        params = self._search_parameters(exclude)
        kk = min(k, self.ntotal)
        if self.mips:
            scores, labels = self._search_mips(q, kk, params, exclude)
        elif params is None:
            scores, labels = self.index.search(q, kk)
        else:
            scores, labels = self.index.search(q, kk, params=params)
        labels = labels.astype(np.int64)
        if self.kind == "hnsw":
            rows = np.where(labels >= 0, self._label_rows[np.maximum(labels, 0)], -1)
        else:
            rows = labels
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        if kk < k:
            pad = k - kk
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores, rows

    def search_excluding(
        self, user_vectors: np.ndarray, k: int, excludes: Sequence[set[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with its own set of excluded rows for each query.

        Small flat indexes score densely with one matmul and mask the excluded rows; the
        others over-fetch by the largest exclusion and filter.
        """
        q = _as_f32(np.atleast_2d(user_vectors))
        k = int(k)
        if self.kind == "flat" and 0 < self.ntotal <= DENSE_MAX_ITEMS and k > 0:
            # torch, not numpy: the server runs torch on its configured thread count, while
            # numpy's OpenBLAS would wake (and spin) one thread per core for a tiny matmul
            xb, ids, pos = self._flat_arrays()
            sizes = [len(ex) for ex in excludes]
            flat = np.fromiter((r for ex in excludes for r in ex), dtype=np.int64, count=sum(sizes))
            at = np.repeat(np.arange(len(q), dtype=np.int64), sizes)
            ok = (flat >= 0) & (flat < len(pos))
            col = pos[flat[ok]]
            at, col = at[ok][col >= 0], col[col >= 0]
            kk = min(k, len(ids))
            top_t, at_t = _dense_topk()(
                torch.from_numpy(q), xb, torch.from_numpy(at), torch.from_numpy(col), kk
            )  # sorted, descending
            top_s = top_t.numpy()
            top_r = np.where(np.isfinite(top_s), ids[at_t.numpy()], -1)
            top_s = np.where(top_r >= 0, top_s, -np.inf).astype(np.float32)
            if kk < k:
                top_s = np.pad(top_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
                top_r = np.pad(top_r, ((0, 0), (0, k - kk)), constant_values=-1)
            return top_s, top_r
        n_search = min(k + max((len(e) for e in excludes), default=0), self.ntotal)
        scores, rows = self.search(q, n_search)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
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

    def _flat_arrays(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(vectors view (N, D), their rows (N,), position of each row or −1) of a flat index."""
        if self._flat is None:
            inner: Any = faiss.downcast_index(self.index.index)
            n = int(inner.ntotal)
            xb = faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            pos = np.full(int(ids.max()) + 1 if n else 0, -1, dtype=np.int64)
            pos[ids] = np.arange(n)
            self._flat = (torch.from_numpy(xb), ids, pos)
        return self._flat

    def _stored(self) -> np.ndarray:
        """The graph's vectors (labels × (D+1)) as a view into FAISS's storage; no copy."""
        n = int(self.index.ntotal)
        if self._xb is None or len(self._xb) != n:
            storage: Any = faiss.downcast_index(self.index.storage)
            self._xb = faiss.rev_swig_ptr(storage.get_xb(), n * int(self.index.d)).reshape(
                n, int(self.index.d)
            )
        return self._xb

    def _search_mips(
        self,
        q: np.ndarray,
        kk: int,
        params: Any,
        exclude: set[int] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the augmented L2 graph; rescore exactly; merge the overflow items in."""
        qa = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
        if params is None:
            _, labels = self.index.search(qa, kk)
        else:
            _, labels = self.index.search(qa, kk, params=params)
        labels = labels.astype(np.int64)
        xb = self._stored()
        over = self._overflow
        if len(over):
            keep = self._label_rows[over] >= 0
            if exclude:
                keep &= ~np.isin(self._label_rows[over], list(exclude))
            over = over[keep]
        if len(over):  # scanned exactly below; drop them where the graph returned them too
            labels = np.where(np.isin(labels, over), -1, labels)
            labels = np.concatenate([labels, np.broadcast_to(over, (len(q), len(over)))], 1)
        scores = np.einsum("bd,bkd->bk", q, xb[np.maximum(labels, 0), : self.dim])
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(labels, top, 1)

    # ---- updates ----------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, rows: Iterable[int] | np.ndarray) -> None:
        """Upsert: rows already present get their vector replaced."""
        x = _as_f32(np.atleast_2d(vectors))
        r = _as_rows(rows)
        if len(x) != len(r):
            raise ConfigError(f"{len(x)} vectors for {len(r)} rows")
        if len(r) == 0:
            return
        if x.shape[1] != self.dim:
            raise ConfigError(f"vector dim {x.shape[1]} ≠ index dim {self.dim}")
        if len(np.unique(r)) != len(r):
            raise ConfigError("duplicate rows in one add")
        self.remove(r, mark_removed=False)
        self._dead = None
        self._flat = None
        if self.kind == "hnsw":
            start = len(self._label_rows)
            if self.mips:
                x, above = _augment(x, float(self.params["radius"]))
                if above.any():
                    self._overflow = np.concatenate([self._overflow, start + np.flatnonzero(above)])
            self.index.add(x)
            self._xb = None
            self._label_rows = np.concatenate([self._label_rows, r])
            for i, row in enumerate(r.tolist()):
                self._row_label[row] = start + i
        else:
            self.index.add_with_ids(x, r)
        self.removed.difference_update(r.tolist())

    def remove(self, rows: Iterable[int] | np.ndarray, *, mark_removed: bool = True) -> int:
        """Remove rows (absent ones are ignored); return how many vectors were removed."""
        r = _as_rows(rows)
        if mark_removed:
            self.removed.update(r.tolist())
        if len(r) == 0:
            return 0
        self._flat = None
        if self.kind == "hnsw":
            self._dead = None
            n = 0
            for row in r.tolist():
                label = self._row_label.pop(row, None)
                if label is not None:
                    self._label_rows[label] = -1
                    n += 1
            return n
        return int(self.index.remove_ids(faiss.IDSelectorBatch(r)))

    # ---- persistence ------------------------------------------------------------------------
    def save(self, directory: Path, *, prefix: str = "") -> dict[str, str]:
        """Write the index files into ``directory``; return {file name: sha256}.

        ``prefix`` names a second index in the same bundle (``text_`` for the search index).
        """
        directory = Path(directory)
        f_index, f_meta, f_rows = _names(prefix)
        faiss.write_index(self.index, str(directory / f_index))
        names = [f_index]
        if self.kind == "hnsw":
            np.save(directory / f_rows, self._label_rows)
            names.append(f_rows)
        meta = {
            "format": META_FORMAT,
            "kind": self.kind,
            "params": self.params,
            "dim": self.dim,
            "n_vectors": self.ntotal,
            "tombstones": self.tombstones,
            "removed_rows": sorted(self.removed),
        }
        if self.mips:
            meta["overflow_labels"] = self._overflow.tolist()
        (directory / f_meta).write_text(json.dumps(meta, indent=1))
        names.append(f_meta)
        return {name: sha256_file(directory / name) for name in names}

    @classmethod
    def load(
        cls,
        directory: Path,
        section: dict[str, Any] | None,
        *,
        dim: int | None = None,
        n_items: int | None = None,
        prefix: str = "",
    ) -> ItemIndex:
        """Read an index back and check it against the manifest's ``index`` section.

        ``dim``/``n_items``: the model's vector dimension and catalog size, when known.
        Raises BundleIntegrityError on any mismatch (hash, kind, count, dimension).
        """
        directory = Path(directory)
        f_index, f_meta, f_rows = _names(prefix)
        if not section:
            raise BundleIntegrityError(
                f"{directory}: the manifest has no index section; run `fusionrec index` first"
            )
        files: dict[str, str] = section.get("files", {})
        if f_index not in files or f_meta not in files:
            raise BundleIntegrityError(
                f"{directory}: the manifest's index section lists no {f_index}/{f_meta}"
            )
        verify_files(directory, files)
        try:
            meta = json.loads((directory / f_meta).read_text())
            index = faiss.read_index(str(directory / f_index))
            label_rows = np.load(directory / f_rows) if f_rows in files else None
        except (RuntimeError, ValueError, OSError) as exc:
            raise BundleIntegrityError(f"{directory}: cannot read the index: {exc}") from exc
        kind = section.get("kind")
        if kind not in ("flat", "hnsw", "ivfpq") or meta.get("kind") != kind:
            raise BundleIntegrityError(
                f"{directory}: index kind {meta.get('kind')!r} ≠ manifest {kind!r}"
            )
        if kind == "hnsw" and label_rows is None:
            raise BundleIntegrityError(f"{directory}: hnsw index without {f_rows}")
        item_index = cls(
            index,
            kind,
            meta.get("params", section.get("params", {})),
            label_rows=label_rows,
            removed=set(meta.get("removed_rows", [])),
            overflow=meta.get("overflow_labels", []),
        )
        checks: list[tuple[str, int, Any]] = [
            ("dimension", item_index.dim, section.get("dim")),
            ("vector count", item_index.ntotal, section.get("n_vectors")),
        ]
        if dim is not None:
            checks.append(("dimension (model)", item_index.dim, dim))
        for what, got, expected in checks:
            if expected is None or int(got) != int(expected):
                raise BundleIntegrityError(
                    f"{directory}: index {what} is {got}, the manifest/model says "
                    f"{expected}; the index does not belong to this bundle — rebuild it with "
                    "`fusionrec index`"
                )
        if kind == "hnsw" and label_rows is not None and len(label_rows) != index.ntotal:
            raise BundleIntegrityError(
                f"{directory}: {f_rows} has {len(label_rows)} labels, index {index.ntotal}"
            )
        if n_items is not None and item_index.ntotal:
            rows = item_index.rows()
            if rows[0] < 0 or rows[-1] >= n_items:
                raise BundleIntegrityError(
                    f"{directory}: index holds row {int(rows[-1])} but the catalog has "
                    f"{n_items} items; the index does not belong to this bundle"
                )
        return item_index


# ---- building ---------------------------------------------------------------------------------


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    kind: IndexKind = "auto",
    params: IndexParams | None = None,
) -> ItemIndex:
    """Build an inner-product index of ``vectors`` (N, D) under catalog rows ``ids`` (N,)."""
    p = params or IndexParams()
    x = _as_f32(vectors)
    rows = _as_rows(ids)
    if x.ndim != 2 or len(x) != len(rows):
        raise IndexBuildError(f"vectors {x.shape} and ids ({len(rows)},) do not match")
    if len(rows) == 0:
        raise IndexBuildError("no items to index (the catalog is empty or every item is removed)")
    if not np.isfinite(x).all():
        raise IndexBuildError("item vectors contain NaN or inf; the model is broken")
    n, d = x.shape
    built = choose_kind(kind, n, d, p)
    if built == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        index.add_with_ids(x, rows)
        return ItemIndex(index, "flat", {})
    if built == "hnsw":
        meta: dict[str, Any] = {
            "M": p.hnsw_m,
            "efConstruction": p.ef_construction,
            "efSearch": p.ef_search,
            "metric": p.hnsw_metric,
        }
        if p.hnsw_metric == "ip":
            hnsw = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            stored = x
        elif p.hnsw_metric == "l2_mips":
            radius = float(np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64).max()))
            meta["radius"] = radius = max(radius, 1e-12)
            hnsw = faiss.IndexHNSWFlat(d + 1, p.hnsw_m, faiss.METRIC_L2)
            stored = _augment(x, radius)[0]
        else:
            raise ConfigError(f"hnsw_metric {p.hnsw_metric!r}; valid: l2_mips, ip")
        hnsw.hnsw.efConstruction = p.ef_construction
        hnsw.add(stored)
        return ItemIndex(hnsw, "hnsw", meta, label_rows=rows.copy())
    nlist = p.nlist or int(np.clip(round(2 * np.sqrt(n)), 1, 65_536))
    nlist = max(1, min(nlist, n // 39 or 1))
    m = _pq_m(d, p.pq_m)
    nbits = p.pq_nbits if n >= (1 << p.pq_nbits) * 4 else max(1, int(np.log2(max(n // 4, 2))))
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = p.seed
    # PQ k-means: 40 points per centroid and 10 iterations keep training to seconds
    ivf.pq.cp.max_points_per_centroid = 40
    ivf.pq.cp.niter = 10
    ivf.pq.cp.seed = p.seed
    n_train = min(n, max(nlist * p.train_points_per_list, (1 << nbits) * 64))
    sample = np.random.default_rng(p.seed).choice(n, size=n_train, replace=False)
    ivf.train(x[np.sort(sample)])
    ivf.add_with_ids(x, rows)
    return ItemIndex(
        ivf, "ivfpq", {"nlist": nlist, "nprobe": min(p.nprobe, nlist), "pq_m": m, "pq_nbits": nbits}
    )


def recall_at(
    index: ItemIndex,
    vectors: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    ks: tuple[int, ...] = RECALL_KS,
) -> dict[str, float]:
    """recall@k of ``index`` against exact inner-product search over ``vectors``/``rows``.

    Tie-aware: a returned item counts as a hit when its exact score reaches the k-th exact
    score (within float tolerance), so equal-score items never count as misses.
    """
    x = _as_f32(vectors)
    r = _as_rows(rows)
    q = _as_f32(queries)
    kmax = min(max(ks), len(r))
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    ex_scores, _ = exact.search(q, kmax)
    _, got_rows = index.search(q, kmax)
    pos = np.full(int(r.max()) + 1, -1, dtype=np.int64)
    pos[r] = np.arange(len(r))
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, kmax)
        got = got_rows[:, :kk]
        valid = got >= 0
        idx = pos[np.where(valid, got, 0)]
        valid &= idx >= 0
        true = np.einsum("bd,bkd->bk", q, x[np.where(valid, idx, 0)])
        thresh = ex_scores[:, kk - 1 : kk]
        tol = 1e-4 * np.maximum(1.0, np.abs(thresh))
        hits = (valid & (true >= thresh - tol)).sum(1)
        out[f"recall@{k}"] = float(np.mean(np.minimum(hits, kk) / kk))
    return out


def measure_recall(
    index: ItemIndex,
    vectors: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    k: tuple[int, ...] = RECALL_KS,
) -> dict[str, float]:
    """Recall of the index against exact search (faiss.IndexFlatIP) on ``queries``."""
    return recall_at(index, vectors, rows, queries, k)


def tune_to_floor(
    index: ItemIndex,
    vectors: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    *,
    floor: float = 0.95,
    params: IndexParams | None = None,
) -> dict[str, float]:
    """Raise efSearch/nprobe until recall@100 ≥ ``floor``; IndexBuildError if it never does."""
    p = params or IndexParams()
    recall = measure_recall(index, vectors, rows, queries)
    tried = [(dict(index.params), recall["recall@100"])]
    while recall["recall@100"] < floor:
        if index.kind == "hnsw":
            current = int(index.params["efSearch"])
            if current >= p.max_ef_search:
                break
            index.set_search_param(min(current * 2, p.max_ef_search))
        elif index.kind == "ivfpq":
            current = int(index.params["nprobe"])
            if current >= int(index.params["nlist"]):
                break
            index.set_search_param(current * 2)
        else:
            break
        recall = measure_recall(index, vectors, rows, queries)
        tried.append((dict(index.params), recall["recall@100"]))
    if recall["recall@100"] < floor:
        steps = "; ".join(f"{t} → {r:.4f}" for t, r in tried)
        hint = {
            "hnsw": "raise --hnsw-m / --ef-construction or use --kind flat",
            "ivfpq": "raise the PQ code size (--pq-m) or use --kind hnsw/flat",
            "flat": "exact search below the floor means ties or NaN vectors",
        }[index.kind]
        raise IndexBuildError(
            f"{index.kind} index reaches recall@100 = {recall['recall@100']:.4f} < floor "
            f"{floor}; tried {steps}; {hint}. Not published."
        )
    return recall


class TunedIndex(NamedTuple):
    item_index: ItemIndex
    recall: dict[str, float]
    build_seconds: float  # of the build that was kept
    rebuilds: int  # HNSW builds refused before it


def build_tuned(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    *,
    kind: IndexKind = "auto",
    params: IndexParams | None = None,
    floor: float = 0.95,
) -> TunedIndex:
    """Build and tune to the recall floor.

    An HNSW graph whose recall stops below the floor at ``max_ef_search`` is rebuilt with M
    and efConstruction doubled while M stays ≤ ``max_hnsw_m``; the refusal names every try.
    """
    p = params or IndexParams()
    failures: list[str] = []
    while True:
        index, build_s = timed_build(vectors, ids, kind=kind, params=p)
        try:
            recall = tune_to_floor(index, vectors, ids, queries, floor=floor, params=p)
        except IndexBuildError as exc:
            failures.append(str(exc).removesuffix(" Not published."))
            if index.kind != "hnsw" or p.hnsw_m * 2 > p.max_hnsw_m:
                raise IndexBuildError(" | ".join(failures) + " Not published.") from None
            p = replace(p, hnsw_m=p.hnsw_m * 2, ef_construction=p.ef_construction * 2)
            del index
            continue
        return TunedIndex(index, recall, build_s, len(failures))


def timed_build(
    vectors: np.ndarray, ids: np.ndarray, *, kind: IndexKind, params: IndexParams
) -> tuple[ItemIndex, float]:
    t0 = time.perf_counter()
    index = build_index(vectors, ids, kind=kind, params=params)
    return index, time.perf_counter() - t0


def params_dict(params: IndexParams) -> dict[str, Any]:
    return asdict(params)
