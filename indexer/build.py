"""Building an item index: choice of kind, construction, tuning to a recall floor.

``auto`` picks ``flat`` up to ``IndexParams.flat_max_items`` live items, ``ivfpq`` when the
float vectors would exceed ``IndexParams.memory_budget_bytes``, ``hnsw`` otherwise. An
approximate index is tuned (efSearch / nprobe doubled) until its recall@100 against exact
search reaches the floor on real user vectors, and refused — never published — when it
cannot; an HNSW graph that stalls is rebuilt with M and efConstruction doubled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import faiss
import numpy as np

from indexer.flat import DENSE_MAX_ITEMS, FlatIndex
from indexer.hnsw import HnswIndex
from indexer.index import BuiltKind, IndexRef, ItemIndex, as_f32, as_rows, check_fits, read_files
from indexer.ivfpq import IvfPqIndex
from model_store.errors import BundleIntegrityError, ConfigError, IndexBuildError

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
KINDS: tuple[IndexKind, ...] = ("auto", "flat", "hnsw", "ivfpq")
KIND_CLASSES: dict[str, type[ItemIndex]] = {
    "flat": FlatIndex,
    "hnsw": HnswIndex,
    "ivfpq": IvfPqIndex,
}
RECALL_KS = (10, 100)


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


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    kind: IndexKind = "auto",
    params: IndexParams | None = None,
) -> ItemIndex:
    """Build an inner-product index of ``vectors`` (N, D) under catalog rows ``ids`` (N,)."""
    p = params or IndexParams()
    x = as_f32(vectors)
    rows = as_rows(ids)
    if x.ndim != 2 or len(x) != len(rows):
        raise IndexBuildError(f"vectors {x.shape} and ids ({len(rows)},) do not match")
    if len(rows) == 0:
        raise IndexBuildError("no items to index (the catalog is empty or every item is removed)")
    if not np.isfinite(x).all():
        raise IndexBuildError("item vectors contain NaN or inf; the model is broken")
    built = choose_kind(kind, len(x), x.shape[1], p)
    if built == "flat":
        return FlatIndex.build(x, rows)
    if built == "hnsw":
        return HnswIndex.build(
            x, rows, m=p.hnsw_m, ef_construction=p.ef_construction, ef_search=p.ef_search
        )
    return IvfPqIndex.build(
        x,
        rows,
        nlist=p.nlist,
        nprobe=p.nprobe,
        pq_m=p.pq_m,
        pq_nbits=p.pq_nbits,
        train_points_per_list=p.train_points_per_list,
        seed=p.seed,
    )


def read_index(
    directory: Path,
    section: IndexRef | None,
    *,
    dim: int | None = None,
    n_items: int | None = None,
    prefix: str = "",
) -> ItemIndex:
    """Read a published index back, checked against the manifest's ``section`` and, when
    given, the model's vector dimension and catalog size; BundleIntegrityError otherwise."""
    index, meta = read_files(directory, section, prefix)
    assert section is not None  # read_files refuses a missing section
    kind = KIND_CLASSES.get(section.kind)
    if kind is None:
        raise BundleIntegrityError(f"{directory}: unknown index kind {section.kind!r}")
    item_index = kind._from_files(index, meta, directory, prefix, section.files)
    check_fits(item_index, directory, section, dim=dim, n_items=n_items)
    return item_index


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
    x = as_f32(vectors)
    r = as_rows(rows)
    q = as_f32(queries)
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
    recall = recall_at(index, vectors, rows, queries)
    tried = [(index.params.model_dump(by_alias=True), recall["recall@100"])]
    while recall["recall@100"] < floor and index.widen(p.max_ef_search):
        recall = recall_at(index, vectors, rows, queries)
        tried.append((index.params.model_dump(by_alias=True), recall["recall@100"]))
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
