"""ItemIndex on synthetic vectors: exact search, ANN recall, add/remove, save/load checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

import indexer.flat as indexer_flat
from indexer.build import (
    IndexParams,
    build_index,
    build_tuned,
    choose_kind,
    read_index,
    recall_at,
    tune_to_floor,
)
from indexer.index import INDEX_FILE
from model_store.bundle.manifest import HnswParams
from model_store.errors import BundleIntegrityError, IndexBuildError

DIM = 16


@dataclass
class Ref:
    """The parts of a manifest's index section that loading checks."""

    kind: str
    dim: int
    n_vectors: int
    files: dict[str, str]


def clustered(n: int, seed: int, *, centers: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centers, DIM)).astype(np.float32)
    return c[rng.integers(0, centers, n)] + 0.4 * rng.standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = clustered(6000, 0)
    rows = np.arange(len(x), dtype=np.int64) * 3 + 5  # rows need not be 0..N-1
    return x, rows, clustered(200, 1)


def exact_top(x: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return rows[np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]]


def test_flat_is_exact(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, rows, q = catalog
    index = build_index(x, rows, kind="flat")
    scores, got = index.search(q, 10)
    np.testing.assert_array_equal(got, exact_top(x, rows, q, 10))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert recall_at(index, x, rows, q) == {"recall@10": 1.0, "recall@100": 1.0}


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_ann_recall_reaches_floor(
    kind: str, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, q = catalog
    index = build_index(x, rows, kind=kind, params=IndexParams(hnsw_m=16, ef_search=32, nprobe=4))  # type: ignore[arg-type]
    recall = tune_to_floor(index, x, rows, q, floor=0.95)
    assert recall["recall@100"] >= 0.95
    again = recall_at(index, x, rows, q)  # the tuned parameters stay set
    assert again["recall@100"] == pytest.approx(recall["recall@100"])
    assert again["recall@10"] >= 0.9


def test_unreachable_floor_is_refused(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, rows, q = catalog
    p = IndexParams(hnsw_m=4, ef_construction=8, ef_search=4, max_ef_search=8)
    index = build_index(x, rows, kind="hnsw", params=p)
    with pytest.raises(IndexBuildError, match=r"recall@100 = .* < floor 0.999.*Not published"):
        tune_to_floor(index, x, rows, q, floor=0.999, params=p)


def varied_norms(n: int, seed: int) -> np.ndarray:
    """Clustered vectors whose norms spread over ~±1 e-fold, like trained item vectors."""
    rng = np.random.default_rng(seed)
    x = clustered(n, seed)
    return (x * np.exp(rng.normal(0, 0.6, n))[:, None]).astype(np.float32)


def test_hnsw_mips_transform_reaches_floor_where_inner_product_graph_stalls() -> None:
    x, q = varied_norms(8000, 0), varied_norms(200, 1)
    rows = np.arange(len(x), dtype=np.int64)
    base = dict(hnsw_m=16, ef_construction=40, ef_search=32, max_ef_search=2048)
    # a graph built on raw inner products stalls below the floor however wide the search
    ip = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    ip.hnsw.efConstruction = 40
    ip.add(x)
    ip.hnsw.efSearch = 2048
    top = ip.search(q, 100)[1]
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :100]
    ip_recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(top, exact, strict=True)])
    assert ip_recall < 0.95
    mips = build_index(x, rows, kind="hnsw", params=IndexParams(**base))
    assert mips.dim == DIM and isinstance(mips.params, HnswParams) and mips.params.radius > 0
    recall = tune_to_floor(mips, x, rows, q, floor=0.95, params=IndexParams(**base))
    assert recall["recall@100"] >= 0.95
    scores, got = mips.search(q[:5], 20)  # scores are the exact inner products, descending
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q[:5], x[got]), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_hnsw_mips_overflow_items_are_found_and_persist(
    tmp_path: Path, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, _ = catalog
    index = build_index(x[:2000], rows[:2000], kind="hnsw", params=IndexParams(ef_search=128))
    assert isinstance(index.params, HnswParams)
    radius = index.params.radius
    direction = x[2500] / np.linalg.norm(x[2500])
    big = (3 * radius * direction)[None]  # above the build radius: cannot sit on the sphere
    index.add(big, [99_999])
    assert index.overflow == 1
    scores, got = index.search(direction[None], 5)
    assert got[0, 0] == 99_999
    assert scores[0, 0] == pytest.approx(3 * radius, rel=1e-5)
    assert 99_999 not in index.search(direction[None], 5, exclude={99_999})[1][0]
    files = index.save(tmp_path)
    loaded = read_index(tmp_path, Ref("hnsw", DIM, index.ntotal, files), dim=DIM)
    assert loaded.overflow == 1
    assert loaded.search(direction[None], 1)[1][0, 0] == 99_999
    loaded.remove([99_999])
    assert loaded.overflow == 0 and 99_999 not in loaded.search(direction[None], 50)[1][0]


def test_build_tuned_rebuilds_hnsw_with_larger_m(
    catalog: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, rows, q = catalog
    p = IndexParams(hnsw_m=4, ef_construction=8, ef_search=64, max_ef_search=64, max_hnsw_m=32)
    tuned = build_tuned(x, rows, q, kind="hnsw", params=p, floor=0.95)
    assert tuned.rebuilds >= 1
    params = tuned.item_index.params
    assert isinstance(params, HnswParams) and params.m == 4 * 2**tuned.rebuilds
    assert tuned.recall["recall@100"] >= 0.95
    with pytest.raises(IndexBuildError, match=r"'M': 4.*\| .*'M': 8.*Not published"):
        build_tuned(
            x,
            rows,
            q,
            kind="hnsw",
            floor=0.95,
            params=IndexParams(
                hnsw_m=4, ef_construction=8, ef_search=8, max_ef_search=8, max_hnsw_m=8
            ),
        )


def test_auto_kind() -> None:
    p = IndexParams(flat_max_items=100, memory_budget_bytes=1000 * 64 * 4)
    assert choose_kind("auto", 100, 64, p) == "flat"
    assert choose_kind("auto", 500, 64, p) == "hnsw"
    assert choose_kind("auto", 5000, 64, p) == "ivfpq"
    assert choose_kind("hnsw", 5, 64, p) == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_add_replace_remove_exclude(
    kind: str, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, _ = catalog
    n = 2000
    index = build_index(
        x[:n],
        rows[:n],
        kind=kind,  # type: ignore[arg-type]
        params=IndexParams(ef_search=256, nprobe=64),
    )
    # held-out, in-distribution items (PQ codebooks only fit the training distribution)
    q1 = x[n + 1 : n + 2]
    q2 = x[n + 1 + int(np.argmin(x[n + 1 : n + 400] @ q1[0]))][None]  # far from q1
    v1, v2 = 1.5 * q1, 1.5 * q2  # scaled up: the inner-product winner for q1 / q2

    def top(q: np.ndarray, k: int = 10, **kw: set[int]) -> list[int]:
        return index.search(q, k, **kw)[1][0].tolist()  # type: ignore[arg-type]

    index.add(v1, [10_000])
    assert index.ntotal == n + 1
    assert 10_000 in top(q1)
    if kind == "flat":
        assert top(q1, 1) == [10_000]
    assert 10_000 not in top(q1, 10, exclude={10_000})
    # replace an existing row's vector: the old one must not come back
    index.add(v2, [10_000])
    assert index.ntotal == n + 1
    assert 10_000 not in top(q1, 50)
    assert 10_000 in top(q2)
    index.remove([10_000])
    assert index.ntotal == n
    assert 10_000 in index.removed
    assert 10_000 not in top(q2, 50)
    index.add(v1, [10_000])  # re-adding un-removes
    assert 10_000 not in index.removed
    assert 10_000 in top(q1)
    if kind == "hnsw":
        assert index.tombstones == 2


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_search_excluding_per_query(
    kind: str, monkeypatch: pytest.MonkeyPatch, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, q = catalog
    index = build_index(
        x[:3000],
        rows[:3000],
        kind=kind,  # type: ignore[arg-type]
        params=IndexParams(ef_search=256, nprobe=64),
    )
    q = q[:6]
    plain = index.search(q, 60)[1]
    excludes = [
        set(plain[0, :10].tolist()),
        set(),
        {int(plain[2, 0]), 10**9, -4},
        set(rows[:3000].tolist()),
        set(plain[4, :30:2].tolist()),
        {int(plain[5, 3])},
    ]
    scores, got = index.search_excluding(q, 20, excludes)
    assert got.shape == scores.shape == (6, 20)
    for b, ex in enumerate(excludes):
        live = got[b][got[b] >= 0]
        assert not set(live.tolist()) & ex
        assert np.all(np.diff(scores[b][got[b] >= 0]) <= 1e-6)
        want = [r for r in plain[b].tolist() if r not in ex][:20]
        if b == 3:
            assert len(live) == 0 and np.isneginf(scores[b]).all()
        elif kind == "flat":
            assert live.tolist() == want
    if kind == "flat":  # the dense path and the over-fetch path agree
        monkeypatch.setattr(indexer_flat, "DENSE_MAX_ITEMS", 0)
        s2, g2 = index.search_excluding(q, 20, excludes)
        np.testing.assert_array_equal(g2, got)
        np.testing.assert_allclose(s2, scores, rtol=1e-5)
        index.remove(rows[:5])  # the cached arrays follow removals
        monkeypatch.setattr(indexer_flat, "DENSE_MAX_ITEMS", 65_536)
        assert not set(index.search_excluding(q, 3000, [set()] * 6)[1].ravel().tolist()) & set(
            rows[:5].tolist()
        )


def test_fewer_items_than_k_pads() -> None:
    x = clustered(5, 3)
    index = build_index(x, np.arange(5), kind="flat")
    scores, got = index.search(x[:2], 8, exclude={0})
    assert got.shape == (2, 8)
    assert (got[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert 0 not in got


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_roundtrip(
    kind: str, tmp_path: Path, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, q = catalog
    index = build_index(x[:1500], rows[:1500], kind=kind)  # type: ignore[arg-type]
    index.remove(rows[:3])
    files = index.save(tmp_path)
    loaded = read_index(tmp_path, Ref(kind, DIM, index.ntotal, files), dim=DIM)
    assert loaded.removed == index.removed and loaded.params == index.params
    np.testing.assert_array_equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    np.testing.assert_array_equal(loaded.rows(), np.sort(rows[3:1500]))


def test_tampered_or_mismatched_index_refused(
    tmp_path: Path, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x, rows, _ = catalog
    index = build_index(x[:500], rows[:500], kind="flat")
    files = index.save(tmp_path)
    section = Ref("flat", DIM, 500, files)
    with pytest.raises(BundleIntegrityError, match="dimension"):
        read_index(tmp_path, section, dim=DIM + 1)
    with pytest.raises(BundleIntegrityError, match="vector count"):
        read_index(tmp_path, Ref("flat", DIM, 499, files))
    with pytest.raises(BundleIntegrityError, match="kind"):
        read_index(tmp_path, Ref("hnsw", DIM, 500, files))
    with pytest.raises(BundleIntegrityError, match="row"):
        read_index(tmp_path, section, n_items=100)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["n_vectors"] == 500
    raw = bytearray((tmp_path / INDEX_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / INDEX_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        read_index(tmp_path, section)


def test_build_rejects_bad_input() -> None:
    with pytest.raises(IndexBuildError, match="no items"):
        build_index(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), kind="flat")
    with pytest.raises(IndexBuildError, match="NaN"):
        build_index(np.full((3, 4), np.nan, np.float32), np.arange(3), kind="flat")
