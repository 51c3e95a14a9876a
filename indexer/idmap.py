"""The kinds whose FAISS index carries the catalog rows as its own ids (``flat``, ``ivfpq``).

Dimension and size are FAISS's, rows are added and removed by id, a filtered search hands
FAISS an id selector in the kind's search parameters, and loading needs no extra file.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.index import ItemIndex, selector
from model_store.bundle.manifest import index_params


class IdMappedIndex(ItemIndex):
    """The shared part of ``FlatIndex`` and ``IvfPqIndex``; each adds its build, its row
    listing and its search parameters (``_filtered``)."""

    @classmethod
    def _from_files(
        cls, index: Any, meta: dict[str, Any], directory: Path, prefix: str, files: dict[str, str]
    ) -> ItemIndex:
        params = index_params(cls.kind, meta.get("params", {}))
        return cls(index, params, set(meta.get("removed_rows", [])))

    @abstractmethod
    def _filtered(self, sel: Any) -> Any:
        """FAISS search parameters of this kind with the id selector ``sel``."""

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _search(
        self, q: np.ndarray, k: int, exclude: set[int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not exclude:
            scores, rows = self.index.search(q, k)
        else:
            scores, rows = self.index.search(q, k, params=self._filtered(selector(exclude)))
        return scores, rows

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self.index.add_with_ids(x, rows)

    def _remove(self, rows: np.ndarray) -> int:
        return int(self.index.remove_ids(faiss.IDSelectorBatch(rows)))
