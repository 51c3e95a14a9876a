"""Filters, inline fields, similar items and the item lifecycle, through the real app on a
tiny real bundle trained on a catalog with typed attributes (price, year, available) and a
``|``-joined text column (tags)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from model_store.bundle import store as store_mod
from tests.helpers.bundles import copy_store, train_tiny
from tests.helpers.servers import AUTH, make_settings

TAGS = ["red", "green", "blue", "sale", "new"]


@pytest.fixture(scope="module")
def attr_store(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle whose items carry tags (text, '|'-joined), price, year and available."""
    root = tmp_path_factory.mktemp("attrs")
    data = root / "data"
    data.mkdir()
    (data / "interactions.csv").write_bytes((tiny_dataset / "interactions.csv").read_bytes())
    items = pd.read_csv(tiny_dataset / "items.csv")
    rng = np.random.default_rng(3)
    n = len(items)
    items["tags"] = [
        "|".join(sorted(rng.choice(TAGS, rng.integers(1, 3), replace=False))) for _ in range(n)
    ]
    items["price"] = np.round(rng.uniform(1, 100, n), 2)
    items["year"] = rng.integers(1980, 2020, n)
    items["available"] = rng.random(n) > 0.1
    items.to_csv(data / "items.csv", index=False)
    store = root / "store"
    train_tiny(data, store)
    return store


@pytest.fixture(scope="module")
def client(attr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = copy_store(attr_store, tmp_path_factory.mktemp("attrs-api") / "store")
    with TestClient(create_app(make_settings(store))) as c:
        yield c


def catalog(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / store_mod.current_version(store) / "items.parquet")


@pytest.fixture(scope="module")
def items(attr_store: Path) -> pd.DataFrame:
    return catalog(attr_store).set_index("item_id")


def matches(row: pd.Series, flt: dict[str, dict[str, Any]]) -> bool:
    """The filter semantics, written out plainly (independent of model_store.data.attributes)."""
    for field, ops in flt.items():
        v = row[field]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return False
        for op, want in ops.items():
            if field == "tags" and op == "contains":
                ok = want in str(v).split("|")
            elif op == "eq":
                ok = v == want
            elif op == "ne":
                ok = v != want
            elif op == "in":
                ok = v in want
            elif op == "gt":
                ok = v > want
            elif op == "gte":
                ok = v >= want
            elif op == "lt":
                ok = v < want
            else:
                ok = v <= want
            if not ok:
                return False
    return True


def visible(items: pd.DataFrame) -> pd.DataFrame:
    return items[items["available"].astype(bool)]


def filters() -> st.SearchStrategy[dict[str, dict[str, Any]]]:
    price = st.dictionaries(
        st.sampled_from(["gt", "gte", "lt", "lte"]), st.floats(0, 110), min_size=1, max_size=2
    )
    year = st.one_of(
        st.dictionaries(
            st.sampled_from(["gt", "gte", "lt", "lte", "eq", "ne"]),
            st.integers(1978, 2022),
            min_size=1,
            max_size=2,
        ),
        st.builds(lambda ys: {"in": ys}, st.lists(st.integers(1980, 2020), min_size=1, max_size=8)),
    )
    tags = st.builds(lambda t: {"contains": t}, st.sampled_from(TAGS))
    avail = st.just({"eq": True})
    return st.fixed_dictionaries(
        {},
        optional={"price": price, "year": year, "tags": tags, "available": avail},
    )


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    flt=filters(),
    k=st.integers(1, 60),
    endpoint=st.sampled_from(["recommend", "dense", "hybrid", "similar", "cold"]),
)
def test_filters_never_leak_and_fill_k(
    client: TestClient, items: pd.DataFrame, flt: dict[str, dict[str, Any]], k: int, endpoint: str
) -> None:
    live = visible(items)
    ok = {i for i, row in live.iterrows() if matches(row, flt)}
    history = list(items.index[:5])
    seed = str(live.index[7])
    if endpoint == "recommend":
        r = client.post("/v1/recommend", json={"history": history, "k": k, "filter": flt})
        eligible = ok - set(history)
    elif endpoint == "cold":
        r = client.post("/v1/recommend", json={"k": k, "filter": flt})
        eligible = ok
    elif endpoint in ("dense", "hybrid"):
        body = {"query": "blue sale", "k": k, "filter": flt, "mode": endpoint}
        r = client.post("/v1/search", json=body)
        eligible = ok
    else:
        r = client.post(f"/v1/items/{seed}/similar", json={"k": k, "filter": flt})
        eligible = ok - {seed}
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert set(got) <= eligible, (flt, set(got) - eligible)
    assert len(got) == len(set(got))
    if endpoint != "hybrid":  # hybrid has a relevance floor: fewer results are correct there
        assert len(got) == min(k, len(eligible)), (flt, len(got), len(eligible))


def test_filter_with_fewer_matches_than_k_returns_exactly_them(
    client: TestClient, items: pd.DataFrame
) -> None:
    live = visible(items)
    few = [str(i) for i in live.index[10:13]]
    prices = [float(live.loc[i, "price"]) for i in few]
    flt = {"price": {"in": prices}}
    expected = {i for i, row in live.iterrows() if matches(row, flt)}
    assert 3 <= len(expected) < 10
    other = str(items.index[0])
    for body, path in (
        ({"history": [other], "k": 10, "filter": flt}, "/v1/recommend"),
        ({"k": 10, "filter": flt}, "/v1/recommend"),
        ({"query": "anything", "k": 10, "filter": flt, "mode": "dense"}, "/v1/search"),
        ({"k": 10, "filter": flt}, f"/v1/items/{other}/similar"),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        got = [i["item_id"] for i in r.json()["items"]]
        assert sorted(got) == sorted(expected - {other}), (path, got)


def test_bad_filters_and_fields_are_422_naming_them(client: TestClient) -> None:
    cases = [
        ({"colour": {"eq": "red"}}, "colour"),
        ({"price": {"near": 3}}, "near"),
        ({"price": {"contains": 3}}, "contains"),
        ({"tags": {"gt": "a"}}, "gt"),
        ({"price": {"gte": "cheap"}}, "filter.price.gte"),
        ({"available": {"eq": "yes"}}, "filter.available.eq"),
        ({"year": {"in": []}}, "filter.year.in"),
        ({"year": {}}, "filter.year"),
    ]
    for flt, needle in cases:
        for path, body in (
            ("/v1/recommend", {"k": 3}),
            ("/v1/search", {"query": "x", "k": 3}),
        ):
            r = client.post(path, json={**body, "filter": flt})
            assert r.status_code == 422, (flt, r.text)
            assert needle in r.json()["error"]["message"], (flt, r.json())
    r = client.post("/v1/recommend", json={"k": 3, "fields": ["title", "colour"]})
    assert r.status_code == 422 and "colour" in r.json()["error"]["message"]


def test_fields_inline_and_batch_get(client: TestClient, items: pd.DataFrame) -> None:
    r = client.post("/v1/recommend", json={"k": 3, "fields": ["title", "price", "tags"]})
    assert r.status_code == 200, r.text
    for it in r.json()["items"]:
        row = items.loc[it["item_id"]]
        assert it["fields"] == {
            "title": row["title"],
            "price": pytest.approx(row["price"]),
            "tags": row["tags"],
        }
    r = client.post("/v1/search", json={"query": "red", "k": 2, "fields": ["year"]})
    assert all(set(i["fields"]) == {"year"} for i in r.json()["items"])
    assert all(isinstance(i["fields"]["year"], int) for i in r.json()["items"])
    ids = [str(i) for i in items.index[:3]]
    r = client.post("/v1/items:batchGet", json={"ids": [*ids, "nope"], "fields": ["title"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["item_id"] for i in body["items"]] == ids and body["not_found"] == ["nope"]
    assert body["items"][0]["fields"] == {"title": items.loc[ids[0], "title"]}
    r = client.get("/v1/items", params={"ids": ",".join(ids), "fields": "price,available"})
    assert r.status_code == 200 and set(r.json()["items"][1]["fields"]) == {"price", "available"}
    full = client.get(f"/v1/items/{ids[0]}").json()["fields"]
    assert {"title", "tags", "price", "year", "available"} <= set(full)


def test_similar_items_and_a_text_only_item(client: TestClient, items: pd.DataFrame) -> None:
    seed = str(visible(items).index[0])
    r = client.get(f"/v1/items/{seed}/similar", params={"k": 5, "explain": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["item_id"] == seed and len(body["items"]) == 5
    assert seed not in {i["item_id"] for i in body["items"]}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    ex = body["items"][0]["explanation"]
    assert ex["collaborative_similarity"] is not None and -1 <= ex["text_similarity"] <= 1
    # an item added by text only: similar works, its collaborative part is null
    src = items.loc[seed]
    new = {
        "item_id": "text-only-1",
        "title": src["title"],
        "description": src["description"],
        "category": src["category"],
        "tags": src["tags"],
        "price": 5.0,
        "year": 2001,
    }
    assert client.post("/v1/items", headers=AUTH, json={"items": [new]}).status_code == 200
    r = client.get("/v1/items/text-only-1/similar", params={"k": 5, "explain": "true"})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert len(got) == 5 and all(i["explanation"]["collaborative_similarity"] is None for i in got)
    assert all(i["explanation"]["seed_has_id"] is False for i in got)
    r = client.post(
        "/v1/items/text-only-1/similar",
        json={"k": 3, "filter": {"year": {"lt": 1990}}, "fields": ["year"]},
    )
    assert r.status_code == 200 and all(i["fields"]["year"] < 1990 for i in r.json()["items"])
    assert client.get("/v1/items/nope/similar").status_code == 404


def test_hidden_and_deleted_items_never_appear(
    attr_store: Path, tmp_path: Path, items: pd.DataFrame
) -> None:
    store = copy_store(attr_store, tmp_path / "store")
    live = visible(items)
    hide, gone = str(live.index[0]), str(live.index[1])
    seed = str(live.index[2])
    history = [str(i) for i in live.index[2:8]]

    def everywhere(c: TestClient) -> set[str]:
        seen: set[str] = set()
        bodies = [
            ("/v1/recommend", {"history": history, "k": 1000}),
            ("/v1/recommend", {"k": 1000}),
            ("/v1/recommend", {"k": 1000, "filter": {"price": {"gte": 0}}}),
            ("/v1/search", {"query": str(items.loc[hide, "title"]), "k": 1000}),
            ("/v1/search", {"query": str(items.loc[gone, "title"]), "k": 1000}),
            (f"/v1/items/{seed}/similar", {"k": 1000}),
        ]
        for path, body in bodies:
            r = c.post(path, json=body)
            assert r.status_code == 200, r.text
            seen |= {i["item_id"] for i in r.json()["items"]}
        return seen

    with (
        TestClient(create_app(make_settings(store))) as a,
        TestClient(create_app(make_settings(store))) as b,
    ):
        assert {hide, gone} <= everywhere(a)
        hidden_by_data = set(items.index[~items["available"].astype(bool)].astype(str))
        assert hidden_by_data and not hidden_by_data & everywhere(a)
        r = a.patch(f"/v1/items/{hide}", headers=AUTH, json={"available": False})
        assert r.status_code == 200 and r.json()["updated"] == [hide], r.text
        r = a.delete(f"/v1/items/{gone}", headers=AUTH)
        assert r.status_code == 200, r.text
        version, seq = r.json()["model_version"], r.json()["catalog_seq"]
        assert store_mod.current_version(store) == version  # no bundle copy per change
        assert not {hide, gone} & everywhere(a)
        assert a.get(f"/v1/items/{gone}").status_code == 404
        assert a.get(f"/v1/items/{hide}").json()["fields"]["available"] is False
        assert a.delete(f"/v1/items/{gone}", headers=AUTH).status_code == 404
        assert a.patch(f"/v1/items/{gone}", headers=AUTH, json={"price": 1}).status_code == 404
        assert a.post("/v1/events", json={"user_id": "u", "item_id": gone}).status_code == 404
        # the other replica applies the catalog's rows by itself (its 0.5 s poll)
        t0 = time.monotonic()
        while b.get("/readyz").json()["catalog_seq"] < seq:
            assert time.monotonic() - t0 < 5, b.get("/readyz").json()
            time.sleep(0.05)
        assert not {hide, gone} & everywhere(b)
        # bad patches and auth
        assert a.patch(f"/v1/items/{seed}", json={"available": True}).status_code == 401
        assert a.delete(f"/v1/items/{seed}").status_code == 401
        for body, needle in (
            ({"available": "no"}, "available"),
            ({"colour": "red"}, "colour"),
            ({}, "no field"),
            ({"price": "x"}, "price"),
        ):
            r = a.patch(f"/v1/items/{seed}", headers=AUTH, json=body)
            assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
        # an attribute edit is filterable at once
        r = a.patch(f"/v1/items/{seed}", headers=AUTH, json={"price": 1234.5})
        assert r.status_code == 200, r.text
        got = a.post("/v1/recommend", json={"k": 5, "filter": {"price": {"gt": 1000}}}).json()
        assert [i["item_id"] for i in got["items"]] == [seed]
        # unhiding brings it back
        assert (
            a.patch(f"/v1/items/{hide}", headers=AUTH, json={"available": True}).status_code == 200
        )
        assert hide in everywhere(a)
    # a restart keeps all of it
    with TestClient(create_app(make_settings(store))) as c:
        seen = everywhere(c)
        assert gone not in seen and hide in seen
        assert c.get(f"/v1/items/{seed}").json()["fields"]["price"] == 1234.5


def test_hybrid_search_typos_floor_and_pages(
    client: TestClient, items: pd.DataFrame, attr_store: Path
) -> None:
    title = str(visible(items).iloc[3]["title"])
    for mode in ("dense", "hybrid"):
        r = client.post("/v1/search", json={"query": title, "k": 5, "mode": mode})
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["item_id"] == str(visible(items).index[3]), mode
    # one swapped pair of inner letters per word of 4+ letters: BM25's fuzzy terms find it
    typo = " ".join(w[0] + w[2] + w[1] + w[3:] if len(w) >= 4 else w for w in title.split())
    got = client.post("/v1/search", json={"query": typo, "k": 5, "mode": "hybrid"}).json()
    assert str(visible(items).index[3]) in [i["item_id"] for i in got["items"]], typo
    # the relevance floor: with it above the nonsense query's best cosine, hybrid search
    # returns nothing for it (no lexical match either) and still finds the title
    dense = client.post("/v1/search", json={"query": "zzzzqqqq", "k": 1, "mode": "dense"}).json()
    floor = dense["items"][0]["score"] + 0.01
    with TestClient(
        create_app(make_settings(attr_store, search_min_similarity=floor, search_mode="hybrid"))
    ) as strict:
        r = strict.post("/v1/search", json={"query": "zzzzqqqq", "k": 5})
        assert r.status_code == 200 and r.json()["items"] == []
        r = strict.post("/v1/search", json={"query": title, "k": 5})
        assert r.json()["items"][0]["item_id"] == str(visible(items).index[3])
    # pages are stable and do not overlap
    full = client.post("/v1/search", json={"query": "red sale", "k": 12, "mode": "hybrid"}).json()
    pages = [
        client.post(
            "/v1/search", json={"query": "red sale", "k": 4, "offset": o, "mode": "hybrid"}
        ).json()["items"]
        for o in (0, 4, 8)
    ]
    assert [i["item_id"] for p in pages for i in p] == [i["item_id"] for i in full["items"]]
    # filters hold in hybrid mode too
    flt = {"price": {"lt": 20}}
    body = {"query": title, "k": 50, "mode": "hybrid", "filter": flt, "fields": ["price"]}
    got = client.post("/v1/search", json=body).json()["items"]
    assert got and all(it["fields"]["price"] < 20 for it in got)
