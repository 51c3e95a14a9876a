"""``hnsw``: an HNSW graph in L2 over norm-augmented vectors, with tombstones for removals.

``IndexHNSWFlat`` cannot delete. Each vector gets a sequential *label*; ``label_rows`` maps
labels to rows. Removing or replacing an item turns its old label into a **tombstone**
(``label_rows[label] = -1``), filtered out at search time with an ``IDSelector``. Tombstones
cost memory and some search quality, so a periodic full rebuild (``fusionrec index``)
compacts them; the build reports how many there are.

The graph is built in **L2 over vectors augmented to one common norm**, not on raw inner
products: inner product is not a metric (an item can score higher against another item
than against itself), and an HNSW graph built on it leaves small-norm items unreachable — on
trained item vectors of a 1M catalog recall@100 stopped at 0.934 however large efSearch
grew. Each item ``x`` gets an extra coordinate ``sqrt(R² − |x|²)`` (``R`` = the largest norm
at build time) and each query a 0, so ``|q' − x'|² = |q|² + R² − 2·q·x`` ranks exactly like
``q·x`` (Bachrach et al., "Speeding up the Xbox recommender system using a Euclidean
transformation for inner-product spaces", RecSys 2014). Returned scores are recomputed
exactly from the stored vectors. An item added later with a norm above ``R`` cannot be
placed on that sphere: it is kept in the graph but also listed as *overflow* and scanned
exactly on every search (a rebuild absorbs it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import faiss
import numpy as np

from indexer.index import ItemIndex, file_names, selector
from model_store.bundle.manifest import HnswParams
from model_store.errors import BundleIntegrityError

_faiss: Any = faiss  # faiss's stubs lag its SWIG API (SearchParametersHNSW kwargs)


def augment(x: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) → (N, D+1) on the sphere of ``radius``; also the mask of norms above it."""
    sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    extra = np.sqrt(np.maximum(radius * radius - sq, 0.0))
    return (
        np.ascontiguousarray(np.hstack([x, extra[:, None].astype(np.float32)])),
        sq > radius * radius * (1 + 1e-6),
    )


class HnswIndex(ItemIndex):
    kind: ClassVar[Literal["hnsw"]] = "hnsw"
    params: HnswParams

    def __init__(
        self,
        index: Any,
        params: HnswParams,
        removed: set[int] | None,
        *,
        label_rows: np.ndarray,
        overflow: Sequence[int] | np.ndarray = (),
    ) -> None:
        super().__init__(index, params, removed)
        self._label_rows = np.asarray(label_rows, dtype=np.int64)
        live = np.flatnonzero(self._label_rows >= 0)
        self._row_label = dict(zip(self._label_rows[live].tolist(), live.tolist(), strict=True))
        self._dead: np.ndarray | None = None  # cached tombstone labels
        # labels whose norm exceeds the radius, scanned exactly on each search
        self._overflow = np.asarray(sorted(overflow), dtype=np.int64)
        self._xb: np.ndarray | None = None  # zero-copy view of the graph's stored vectors
        self.index.hnsw.efSearch = self.params.ef_search

    @classmethod
    def build(
        cls, x: np.ndarray, rows: np.ndarray, *, m: int, ef_construction: int, ef_search: int
    ) -> HnswIndex:
        radius = float(np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64).max()))
        radius = max(radius, 1e-12)
        graph = faiss.IndexHNSWFlat(x.shape[1] + 1, m, faiss.METRIC_L2)
        graph.hnsw.efConstruction = ef_construction
        graph.add(augment(x, radius)[0])
        params = HnswParams(
            m=m, ef_construction=ef_construction, ef_search=ef_search, radius=radius
        )
        return cls(graph, params, None, label_rows=rows.copy())

    @classmethod
    def _from_files(
        cls, index: Any, meta: dict[str, Any], directory: Path, prefix: str, files: dict[str, str]
    ) -> HnswIndex:
        f_rows = file_names(prefix)[2]
        if f_rows not in files:
            raise BundleIntegrityError(f"{directory}: hnsw index without {f_rows}")
        try:
            label_rows = np.load(directory / f_rows)
        except (ValueError, OSError) as exc:
            raise BundleIntegrityError(f"{directory}: cannot read {f_rows}: {exc}") from exc
        if len(label_rows) != index.ntotal:
            raise BundleIntegrityError(
                f"{directory}: {f_rows} has {len(label_rows)} labels, index {index.ntotal}"
            )
        return cls(
            index,
            HnswParams.model_validate(meta["params"]),
            set(meta.get("removed_rows", [])),
            label_rows=label_rows,
            overflow=meta.get("overflow_labels", []),
        )

    def _save_extra(self, directory: Path, prefix: str) -> tuple[list[str], dict[str, Any]]:
        f_rows = file_names(prefix)[2]
        np.save(directory / f_rows, self._label_rows)
        return [f_rows], {"overflow_labels": self._overflow.tolist()}

    @property
    def dim(self) -> int:
        return int(self.index.d) - 1  # the graph has the augmenting coordinate on top

    @property
    def ntotal(self) -> int:
        return len(self._row_label)

    @property
    def tombstones(self) -> int:
        return int((self._label_rows < 0).sum())

    @property
    def overflow(self) -> int:
        """Live items above the radius (searched exactly until a rebuild)."""
        if not len(self._overflow):
            return 0
        return int((self._label_rows[self._overflow] >= 0).sum())

    def rows(self) -> np.ndarray:
        return np.sort(np.fromiter(self._row_label, dtype=np.int64, count=len(self._row_label)))

    def widen(self, max_ef_search: int) -> bool:
        current = self.params.ef_search
        if current >= max_ef_search:
            return False
        self.params.ef_search = min(current * 2, max_ef_search)
        self.index.hnsw.efSearch = self.params.ef_search
        return True

    def _search(
        self, q: np.ndarray, k: int, exclude: set[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the augmented L2 graph; rescore exactly; merge the overflow items in."""
        if self._dead is None:
            self._dead = np.flatnonzero(self._label_rows < 0).astype(np.int64)
        ex = [self._row_label[r] for r in exclude or () if r in self._row_label]
        banned = np.concatenate([self._dead, np.asarray(ex, dtype=np.int64)])
        qa = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
        if len(banned):
            ef = self.params.ef_search
            params = _faiss.SearchParametersHNSW(efSearch=ef, sel=selector(banned))
            _, labels = self.index.search(qa, k, params=params)
        else:
            _, labels = self.index.search(qa, k)
        labels = labels.astype(np.int64)
        over = self._overflow
        if len(over):
            keep = self._label_rows[over] >= 0
            if exclude:
                keep &= ~np.isin(self._label_rows[over], list(exclude))
            over = over[keep]
        if len(over):  # scanned exactly below; drop them where the graph returned them too
            labels = np.where(np.isin(labels, over), -1, labels)
            labels = np.concatenate([labels, np.broadcast_to(over, (len(q), len(over)))], 1)
        xb = self._stored()
        scores = np.einsum("bd,bkd->bk", q, xb[np.maximum(labels, 0), : self.dim])
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        labels = np.take_along_axis(labels, top, 1)
        rows = np.where(labels >= 0, self._label_rows[np.maximum(labels, 0)], -1)
        return np.take_along_axis(scores, top, 1), rows

    def _stored(self) -> np.ndarray:
        """The graph's vectors (labels × (D+1)) as a view into FAISS's storage; no copy."""
        n = int(self.index.ntotal)
        if self._xb is None or len(self._xb) != n:
            storage: Any = faiss.downcast_index(self.index.storage)
            self._xb = faiss.rev_swig_ptr(storage.get_xb(), n * int(self.index.d)).reshape(
                n, int(self.index.d)
            )
        return self._xb

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._dead = None
        start = len(self._label_rows)
        xa, above = augment(x, self.params.radius)
        if above.any():
            self._overflow = np.concatenate([self._overflow, start + np.flatnonzero(above)])
        self.index.add(xa)
        self._xb = None
        self._label_rows = np.concatenate([self._label_rows, rows])
        for i, row in enumerate(rows.tolist()):
            self._row_label[row] = start + i

    def _remove(self, rows: np.ndarray) -> int:
        self._dead = None
        n = 0
        for row in rows.tolist():
            label = self._row_label.pop(row, None)
            if label is not None:
                self._label_rows[label] = -1
                n += 1
        return n
