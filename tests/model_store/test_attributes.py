"""Attribute types, filter validation and masks, by hand on a small table; and the
filtered index search (exact and over-fetch paths) on real FAISS indexes."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from indexer.build import IndexParams, build_index
from indexer.index import search_allowed
from model_store.data.attributes import (
    AttributeTable,
    attribute_types,
    check_fields,
    declared_types,
    parse_filter,
)
from model_store.errors import InvalidInputError


@pytest.fixture
def table() -> AttributeTable:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "title": ["Alpha", "Beta", "Gamma", "Delta", ""],
            "genres": ["Action|Comedy", "Comedy", "Drama", "Comedy Drama|Thriller", None],
            "year": [1991.0, 1999.0, 2000.0, np.nan, 1989.0],
            "available": [True, None, False, True, True],
        }
    )
    types = attribute_types(["title", "genres"], {"year": "number"})
    return AttributeTable(items, types, removed={4})


def rows(mask: np.ndarray | None) -> list[int]:
    assert mask is not None
    return np.flatnonzero(mask).tolist()


def test_types_declared_by_the_dataset() -> None:
    items = pd.DataFrame(
        {"item_id": ["1"], "title": ["t"], "price": [1.5], "n": [3], "ok": [True], "s": ["x"]}
    )
    assert declared_types(items, ["title"]) == {
        "price": "number",
        "n": "number",
        "ok": "bool",
        "s": "text",
    }
    types = attribute_types(["title"], {"price": "number"})
    assert types == {"title": "text", "price": "number", "available": "bool"}


def test_masks_by_hand(table: AttributeTable) -> None:
    # c is hidden (available false), e is removed; b's available is unset = true
    assert rows(table.visible) == [0, 1, 3]
    assert table.mask(()) is table.visible and not table.all_visible

    def m(raw: dict[str, dict[str, object]]) -> list[int]:
        return rows(table.mask(parse_filter(raw, table.types)))

    assert m({"genres": {"contains": "Comedy"}}) == [0, 1]  # not "Comedy Drama"
    assert m({"genres": {"contains": "Thriller"}}) == [3]
    assert m({"genres": {"eq": "Comedy"}}) == [1]
    assert m({"genres": {"in": ["Drama", "Comedy"]}}) == [1]
    assert m({"genres": {"ne": "Comedy"}}) == [0, 3]
    assert m({"year": {"gte": 1990, "lt": 2000}}) == [0, 1]
    assert m({"year": {"ne": 1991}}) == [1]  # a missing year matches nothing
    assert m({"year": {"in": [1999, 2000]}}) == [1]
    assert m({"year": {"gt": 1990}, "genres": {"contains": "Action"}}) == [0]
    assert m({"available": {"eq": True}}) == [0, 1, 3]
    assert m({"available": {"eq": False}}) == []  # hidden items are never listed
    assert m({"title": {"eq": "alpha"}}) == []  # exact, case-sensitive
    # cached: the same filter in another order is the same mask object
    a = table.mask(parse_filter({"year": {"lt": 2000, "gt": 1}}, table.types))
    b = table.mask(parse_filter({"year": {"gt": 1, "lt": 2000}}, table.types))
    assert a is b and not a.flags.writeable


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"colour": {"eq": "x"}}, "filter.colour: unknown field"),
        ({"year": {"near": 1}}, "filter.year.near: unknown operator"),
        ({"year": {"contains": 1}}, "does not apply to the number field"),
        ({"genres": {"lt": "b"}}, "does not apply to the text field"),
        ({"year": {"gt": "1990"}}, "filter.year.gt: a finite number"),
        ({"year": {"gt": True}}, "filter.year.gt: a finite number"),
        ({"available": {"eq": 1}}, "filter.available.eq: a boolean"),
        ({"genres": {"eq": 3}}, "filter.genres.eq: a string"),
        ({"genres": {"in": "Comedy"}}, "filter.genres.in: a list"),
        ({"genres": {"in": ["a", 2]}}, "filter.genres.in[1]"),
        ({"genres": {}}, "filter.genres: an object"),
        ({"genres": "Comedy"}, "filter.genres: an object"),
        (["genres"], "filter: an object"),
        ({"genres": {"contains": "x" * 2000}}, "filter.genres.contains: at most 1024 characters"),
        ({"genres": {"in": ["x"] * 1001}}, "filter.genres.in: a list of 1..1000"),
        ({"genres": {"in": ["y" * 1025]}}, "filter.genres.in[0]: at most 1024 characters"),
        ({"genres": {"in": [f"{n:0>1000}" for n in range(80)]}}, "filter: at most 65536 bytes"),
        ({"x" * 300: {"eq": "a"}}, "filter: field names are at most 256 characters"),
    ],
)
def test_bad_filters_name_what_is_wrong(table: AttributeTable, raw: object, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=None) as err:
        parse_filter(raw, table.types)
    assert needle in str(err.value)


def test_bounds_are_checked_before_the_fields(table: AttributeTable) -> None:
    # an unknown field with a huge value is refused for its size, in well under 10 ms
    raw = {"nope": {"contains": "z" * 900_000}}
    start = time.perf_counter()
    with pytest.raises(InvalidInputError) as err:
        parse_filter(raw, table.types)
    assert time.perf_counter() - start < 0.01
    assert "filter.nope.contains: at most 1024 characters" in str(err.value)


def test_mask_cache_stays_inside_its_byte_budget() -> None:
    """150 distinct large `in` filters: the cache's own count of its bytes stays under the
    budget, and so does the memory the process really keeps (tracemalloc)."""
    n = 5000
    items = pd.DataFrame({"item_id": [str(i) for i in range(n)], "title": ["t"] * n})
    budget = 2 * 1024 * 1024
    table = AttributeTable(items, attribute_types(["title"], {}), removed=(), cache_bytes=budget)
    table.mask(parse_filter({"title": {"eq": "t"}}, table.types))  # columns built once
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for k in range(150):
        values = [f"{k:04d}-{v:04d}-" + "v" * 50 for v in range(1000)]  # ~60 KB each
        mask = table.mask(parse_filter({"title": {"in": values}}, table.types))
        assert mask is not None and not mask.any()
        assert table.cache_bytes <= budget
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert table.cache_bytes > budget // 2  # it does cache
    assert after - before < budget * 1.5, (after - before, budget)


def test_fields(table: AttributeTable) -> None:
    assert table.fields([0, 1], ["year", "available", "genres"]) == [
        {"year": 1991, "available": True, "genres": "Action|Comedy"},
        {"year": 1999, "available": True, "genres": "Comedy"},
    ]
    assert table.fields([3], ["year"]) == [{"year": None}]
    assert check_fields(["title", "title", "year"], table.types) == ["title", "year"]
    with pytest.raises(InvalidInputError, match="colour"):
        check_fields(["colour"], table.types)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_search_allowed_never_leaks_and_fills_k(kind: str) -> None:
    rng = np.random.default_rng(0)
    n, d = 3000, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    index = build_index(x, np.arange(n), kind=kind, params=IndexParams(nlist=16, pq_m=4))
    q = rng.normal(size=(3, d)).astype(np.float32)

    def exact(r: np.ndarray) -> np.ndarray:
        out: np.ndarray = q @ x[r].T
        return out

    for share in (0.9, 0.3, 0.01):
        allowed = rng.random(n) < share
        ok = np.flatnonzero(allowed)
        for exact_max in (10**6, 5):  # exact scoring, then the over-fetch loop
            scores, got = search_allowed(index, q, 20, allowed, exact, exact_max=exact_max)
            assert got.shape == (3, 20)
            assert (got >= 0).all() and allowed[got].all(), (kind, share)
            assert all(len(set(r.tolist())) == 20 for r in got)
        # exact path: the true top 20 among the allowed rows
        _, got = search_allowed(index, q, 20, allowed, exact)
        truth = ok[np.argsort(-(q @ x[ok].T), axis=1)[:, :20]]
        assert (got == truth).all()
    few = np.zeros(n, dtype=bool)
    few[[5, 17, 2999]] = True
    for exact_max in (10**6, 1):
        scores, got = search_allowed(index, q, 10, few, exact, exact_max=exact_max)
        assert {int(r) for r in got[0] if r >= 0} == {5, 17, 2999}
        assert (got[:, 3:] == -1).all() and np.isinf(scores[:, 3:]).all()
