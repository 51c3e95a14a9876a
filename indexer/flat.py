"""``flat``: exact inner-product search, ``IndexIDMap2(IndexFlatIP)``; add/remove by row id.

Up to ``DENSE_MAX_ITEMS`` items, a batch of queries with per-query exclusions is scored
with one dense matmul (TorchScript, so it runs without taking the GIL between ops) and the
excluded rows are masked, instead of over-fetching through FAISS.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import faiss
import numpy as np
import torch

from indexer.idmap import IdMappedIndex
from indexer.index import as_f32, pad_to
from model_store.bundle.manifest import FlatParams

DENSE_MAX_ITEMS = 65_536  # flat indexes up to this size score a batch with one matmul

# faiss's bundled type stubs lag its SWIG API (SearchParameters kwargs)
_faiss: Any = faiss


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


class FlatIndex(IdMappedIndex):
    kind: ClassVar[Literal["flat"]] = "flat"
    params: FlatParams

    def __init__(self, index: Any, params: FlatParams, removed: set[int] | None) -> None:
        super().__init__(index, params, removed)
        self._arrays: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None

    @classmethod
    def build(cls, x: np.ndarray, rows: np.ndarray) -> FlatIndex:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
        index.add_with_ids(x, rows)
        return cls(index, FlatParams(), None)

    def rows(self) -> np.ndarray:
        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def _filtered(self, sel: Any) -> Any:
        return _faiss.SearchParameters(sel=sel)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._arrays = None
        super()._add(x, rows)

    def _remove(self, rows: np.ndarray) -> int:
        self._arrays = None
        return super()._remove(rows)

    def search_excluding(
        self, user_vectors: np.ndarray, k: int, excludes: Sequence[set[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Small catalogs: one dense matmul with the excluded rows masked; larger ones
        over-fetch like every kind."""
        q = as_f32(np.atleast_2d(user_vectors))
        k = int(k)
        if not (0 < self.ntotal <= DENSE_MAX_ITEMS and k > 0):
            return super().search_excluding(q, k, excludes)
        # torch, not numpy: the server runs torch on its configured thread count, while
        # numpy's OpenBLAS would wake (and spin) one thread per core for a tiny matmul
        xb, ids, pos = self._dense_arrays()
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
        return pad_to(top_s, top_r, k)

    def _dense_arrays(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(vectors view (N, D), their rows (N,), position of each row or −1)."""
        if self._arrays is None:
            inner: Any = faiss.downcast_index(self.index.index)
            n = int(inner.ntotal)
            xb = faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            pos = np.full(int(ids.max()) + 1 if n else 0, -1, dtype=np.int64)
            pos[ids] = np.arange(n)
            self._arrays = (torch.from_numpy(xb), ids, pos)
        return self._arrays
