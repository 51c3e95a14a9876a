"""``ivfpq``: ``IndexIVFPQ`` for catalogs whose float vectors exceed the memory budget.

The index carries the catalog rows as its own ids (IVF stores ids natively; wrapping it in
``IndexIDMap2`` would corrupt the id map on ``remove_ids``, because IVF does not renumber its
internal ids the way ``IndexFlat`` does); add/remove by row id.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import faiss
import numpy as np

from indexer.idmap import IdMappedIndex
from model_store.bundle.manifest import IvfPqParams

_faiss: Any = faiss  # faiss's stubs lag its SWIG API (SearchParametersIVF kwargs)


def pq_subquantizers(dim: int, wanted: int) -> int:
    """``wanted`` sub-quantizers (0 = one per dimension), lowered until it divides ``dim``."""
    m = wanted or dim
    while dim % m:
        m -= 1
    return m


class IvfPqIndex(IdMappedIndex):
    kind: ClassVar[Literal["ivfpq"]] = "ivfpq"
    params: IvfPqParams

    def __init__(self, index: Any, params: IvfPqParams, removed: set[int] | None) -> None:
        super().__init__(index, params, removed)
        self.index.nprobe = self.params.nprobe

    @classmethod
    def build(
        cls,
        x: np.ndarray,
        rows: np.ndarray,
        *,
        nlist: int,
        nprobe: int,
        pq_m: int,
        pq_nbits: int,
        train_points_per_list: int,
        seed: int,
    ) -> IvfPqIndex:
        n, d = x.shape
        nlist = nlist or int(np.clip(round(2 * np.sqrt(n)), 1, 65_536))  # 0 = about 2·√N
        nlist = max(1, min(nlist, n // 39 or 1))
        m = pq_subquantizers(d, pq_m)
        nbits = pq_nbits if n >= (1 << pq_nbits) * 4 else max(1, int(np.log2(max(n // 4, 2))))
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        # PQ k-means: 40 points per centroid and 10 iterations keep training to seconds
        ivf.pq.cp.max_points_per_centroid = 40
        ivf.pq.cp.niter = 10
        ivf.pq.cp.seed = seed
        n_train = min(n, max(nlist * train_points_per_list, (1 << nbits) * 64))
        sample = np.random.default_rng(seed).choice(n, size=n_train, replace=False)
        ivf.train(x[np.sort(sample)])
        ivf.add_with_ids(x, rows)
        params = IvfPqParams(nlist=nlist, nprobe=min(nprobe, nlist), pq_m=m, pq_nbits=nbits)
        return cls(ivf, params, None)

    def rows(self) -> np.ndarray:
        ivf: Any = faiss.extract_index_ivf(self.index)
        invlists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if invlists.list_size(i)
        ]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(parts).astype(np.int64))

    def widen(self, max_ef_search: int) -> bool:
        current = self.params.nprobe
        if current >= self.params.nlist:
            return False
        self.params.nprobe = min(current * 2, int(self.index.nlist))
        self.index.nprobe = self.params.nprobe
        return True

    def _filtered(self, sel: Any) -> Any:
        return _faiss.SearchParametersIVF(nprobe=self.params.nprobe, sel=sel)
