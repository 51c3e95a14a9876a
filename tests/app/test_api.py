"""API tests through the real app (TestClient as a context manager) on a tiny real bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from model_store.bundle import store as store_mod
from model_store.data.dataset import format_item_text
from tests.helpers.bundles import a_trained_user, copy_store, trained_users
from tests.helpers.servers import AUTH, make_settings


@pytest.fixture(scope="module")
def api_store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_store(tiny_store, tmp_path_factory.mktemp("api") / "store")


@pytest.fixture(scope="module")
def client(api_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_store))) as c:
        yield c


def _items(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / store_mod.current_version(store) / "items.parquet")


def _a_user(store: Path) -> str:
    return a_trained_user(store)


def test_health_ready_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index_items"] == ready["catalog_items"] == 400
    assert ready["redis"] == "disabled"
    assert "/v1/recommend" in client.get("/openapi.json").json()["paths"]


def test_recommend_user_history_and_explain(client: TestClient, api_store: Path) -> None:
    user = _a_user(api_store)
    r = client.post("/v1/recommend", json={"user_id": user, "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "personalized" and len(body["items"]) == 5
    assert body["unknown_items"] == []
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    ex = body["items"][0]["explanation"]
    assert ex["history_items"] and -1.0 <= ex["text_similarity"] <= 1.0
    # seen items are excluded by default
    seen = set(trained_users(api_store)[user])
    assert not seen & {i["item_id"] for i in body["items"]}
    # a second call is a cache hit and answers the same
    again = client.post("/v1/recommend", json={"user_id": user, "k": 5, "explain": True}).json()
    assert again["items"] == body["items"]
    assert 'fusionrec_user_vector_cache_total{result="hit"}' in client.get("/metrics").text


def test_history_wins_unknown_ids_and_cold_start(client: TestClient) -> None:
    r = client.post(
        "/v1/recommend",
        json={
            "user_id": "nobody",
            "history": ["i1", "zzz", "i2"],
            "exclude": ["qqq", "i3"],
            "k": 10,
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["strategy"] == "personalized"
    assert body["unknown_items"] == ["zzz", "qqq"]
    assert not {"i1", "i2", "i3"} & {i["item_id"] for i in body["items"]}
    keep = client.post(
        "/v1/recommend", json={"history": ["i1"], "exclude_history": False, "k": 400}
    ).json()
    assert "i1" in {i["item_id"] for i in keep["items"]}
    for payload in ({"user_id": "never-seen"}, {"history": []}, {"history": ["nope"]}, {}):
        cold = client.post("/v1/recommend", json={**payload, "k": 3}).json()
        assert cold["strategy"] == "cold_start" and len(cold["items"]) == 3, payload


def test_search_text_and_personalised(client: TestClient, api_store: Path) -> None:
    items = _items(api_store)
    target = items.iloc[17]
    query = format_item_text(target.to_dict(), ["title", "description", "category"])[:512]
    r = client.post("/v1/search", json={"query": query, "k": 5})
    body = r.json()
    assert r.status_code == 200 and body["strategy"] == "search"  # not personalised
    assert body["items"][0]["item_id"] == target["item_id"]
    user = _a_user(api_store)
    p = client.post(
        "/v1/search", json={"query": str(target["category"]), "user_id": user, "k": 5}
    ).json()
    assert p["strategy"] == "search_personalized" and len(p["items"]) == 5


def test_items_events_and_forget(client: TestClient) -> None:
    item = client.get("/v1/items/i1").json()
    assert item["item_id"] == "i1" and item["trained"] is True and "title" in item["fields"]
    missing = client.get("/v1/items/does-not-exist")
    assert missing.status_code == 404 and "does-not-exist" in missing.json()["error"]["message"]
    user = "event-user-1"
    assert client.post("/v1/recommend", json={"user_id": user}).json()["strategy"] == "cold_start"
    for item_id in ("i5", "i6", "i7"):
        r = client.post(
            "/v1/events", json={"user_id": user, "item_id": item_id, "timestamp": 1.7e9}
        )
        assert r.status_code == 200
    assert r.json() == {"history_length": 3}
    body = client.post("/v1/recommend", json={"user_id": user, "k": 20}).json()
    assert body["strategy"] == "personalized"
    assert not {"i5", "i6", "i7"} & {i["item_id"] for i in body["items"]}
    bad = client.post("/v1/events", json={"user_id": user, "item_id": "no-such-item"})
    assert bad.status_code == 404 and "no-such-item" in bad.json()["error"]["message"]
    assert client.delete(f"/v1/users/{user}").status_code == 204
    assert client.post("/v1/recommend", json={"user_id": user}).json()["strategy"] == "cold_start"


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"k": 1001}, 422, "k: Input should be less than or equal to 1000"),
        ({"k": "many"}, 422, "k: Input should be a valid integer"),
        ({"history": "i1"}, 422, "history: Input should be a valid list"),
        ({"colour": "red"}, 422, "colour: unknown field"),
        ({"history": ["x"] * 1001}, 422, "history: List should have at most 1000 items"),
    ],
)
def test_recommend_bad_inputs(
    client: TestClient, payload: dict[str, object], status: int, needle: str
) -> None:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"], r.json()
    assert r.json()["error"]["code"] == "invalid_request"


def test_bad_json_body_size_and_search_limits(client: TestClient) -> None:
    r = client.post(
        "/v1/recommend", content=b'{"k": 3,', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/recommend", content=b"k=3", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "JSON object" in r.json()["error"]["message"]
    big = json.dumps({"history": ["i1"] * 200_000}).encode()
    r = client.post("/v1/recommend", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "1048576" in r.json()["error"]["message"]
    for query, needle in (
        ("", "at least 1 character"),
        ("x" * 513, "at most 512"),
        ("   ", "non-space"),
    ):
        r = client.post("/v1/search", json={"query": query})
        assert r.status_code == 422 and needle in r.json()["error"]["message"], r.json()
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_admin_auth(client: TestClient) -> None:
    r = client.post("/admin/reload")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.post("/admin/reload", headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = client.post(
        "/v1/items",
        json={"items": [{"item_id": "x", "title": "t"}]},
        headers={"Authorization": "Basic abc"},
    )
    assert r.status_code == 401
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["reloaded"] is False


def test_upsert_validation(client: TestClient) -> None:
    r = client.post("/v1/items", headers=AUTH, json={"items": [{"item_id": "a", "colour": "x"}]})
    assert r.status_code == 422 and "valid text fields" in r.json()["error"]["message"]
    r = client.post("/v1/items", headers=AUTH, json={"items": [{"item_id": "a", "title": 3}]})
    assert r.status_code == 422 and "must be a non-blank string" in r.json()["error"]["message"]
    for blank in (None, "  "):  # a text field, when given, has text (the schema says so)
        body = {"items": [{"item_id": "i1", "title": blank}]}
        r = client.post("/v1/items", headers=AUTH, json=body)
        assert r.status_code == 422 and "items[0].title" in r.json()["error"]["message"]
    r = client.post("/v1/items", headers=AUTH, json={"items": []})
    assert r.status_code == 422 and "items" in r.json()["error"]["message"]
    r = client.post(
        "/v1/items",
        headers=AUTH,
        json={"items": [{"item_id": f"n{i}", "title": "t"} for i in range(1001)]},
    )
    assert r.status_code == 422 and "at most 1000" in r.json()["error"]["message"]


def test_new_item_is_recommended_and_persisted(client: TestClient, api_store: Path) -> None:
    items = _items(api_store)
    category = items["category"].value_counts().index[0]
    same = items[items["category"] == category]
    history = same["item_id"].tolist()[:10]
    source = same.iloc[0]
    new = {
        "item_id": "brand-new-1",
        "title": str(source["title"]),
        "description": str(source["description"]),
        "category": str(category),
    }
    r = client.post("/v1/items", headers=AUTH, json={"items": [new]})
    assert r.status_code == 200, r.text
    version = r.json()["model_version"]
    assert r.json()["added"] == ["brand-new-1"] and r.json()["catalog_seq"] >= 1
    # a row of the catalog table, not a bundle copy: the model version stays
    assert store_mod.current_version(api_store) == version
    assert version == client.get("/readyz").json()["model_version"]
    got = client.get("/v1/items/brand-new-1").json()
    assert got["trained"] is False and got["model_version"] == version
    # retrievable at once (the tiny 3-epoch joint model ranks it low; see the text test)
    recs = client.post("/v1/recommend", json={"history": history, "k": 1000}).json()
    assert recs["model_version"] == version
    assert "brand-new-1" in [i["item_id"] for i in recs["items"]]
    query = format_item_text(new, ["title", "description", "category"])[:512]
    found = client.post("/v1/search", json={"query": query, "k": 2}).json()["items"]
    assert "brand-new-1" in {i["item_id"] for i in found}
    # an edit keeps the fields it does not name
    r = client.post(
        "/v1/items", headers=AUTH, json={"items": [{"item_id": "brand-new-1", "title": "Renamed"}]}
    )
    assert r.json()["updated"] == ["brand-new-1"]
    fields = client.get("/v1/items/brand-new-1").json()["fields"]
    assert fields["title"] == "Renamed" and fields["category"] == category
    # a restart loads the bundle and applies the catalog's rows after it
    with TestClient(create_app(make_settings(api_store))) as fresh:
        again = fresh.get("/v1/items/brand-new-1").json()
        assert again["model_version"] == r.json()["model_version"]
        assert again["fields"]["title"] == "Renamed"
        ready = fresh.get("/readyz").json()
        assert ready["catalog_seq"] == ready["catalog_head"] == r.json()["catalog_seq"]


def test_broken_bundle_is_refused_and_old_keeps_serving(
    client: TestClient, api_store: Path
) -> None:
    serving = client.get("/readyz").json()["model_version"]
    broken = api_store / "v99990101T000000000-broken"
    (api_store / serving).rename(api_store / "keep")
    try:
        copy_store(api_store / "keep", broken)
    finally:
        (api_store / "keep").rename(api_store / serving)
    (broken / "catalog.safetensors").write_bytes(b"corrupted")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["version"] = broken.name
    (broken / "manifest.json").write_text(json.dumps(manifest))
    store_mod.set_current(api_store, broken.name)
    try:
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409, r.text
        message = r.json()["error"]["message"]
        assert "catalog.safetensors" in message and serving in message
        assert client.get("/readyz").json()["model_version"] == serving
        ok = client.post("/v1/recommend", json={"history": ["i1"]})
        assert ok.status_code == 200 and ok.json()["model_version"] == serving
    finally:
        store_mod.set_current(api_store, serving)


def test_security_settings(tiny_store: Path, tmp_path: Path) -> None:
    store = copy_store(tiny_store, tmp_path / "store")
    settings = make_settings(
        store, admin_token=None, api_keys="key-one,key-two", rate_limit_rps=1, rate_limit_burst=3
    )
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/recommend", json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = c.post("/v1/recommend", json={}, headers={"X-API-Key": "nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        codes = [
            c.post("/v1/recommend", json={}, headers={"X-API-Key": "key-one"}).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        r = c.post("/v1/recommend", json={}, headers={"X-API-Key": "key-one"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "requests/s" in r.json()["error"]["message"]
        # buckets are per client: the other key still has its burst
        assert c.post("/v1/recommend", json={}, headers={"X-API-Key": "key-two"}).status_code == 200
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 403 and "FUSIONREC_ADMIN_TOKEN" in r.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200


def test_not_ready_without_bundle(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "CURRENT" in r.json()["error"]["message"]
        assert c.post("/v1/recommend", json={}).status_code == 503


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    monkeypatch.setenv("FUSIONREC_STORE", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FUSIONREC_API_KEYS", "a, b")
    s = Settings()  # type: ignore[call-arg]
    assert s.redis.url == "redis://127.0.0.1:1/0"
    assert [k.get_secret_value() for k in s.security.api_keys] == ["a", "b"]
    assert s.http.max_body_bytes == 1 << 20 and s.runtime.candidates == 200
    monkeypatch.setenv("FUSIONREC_ADMIN_TOKEN", "short")
    with pytest.raises(ValidationError, match="16 characters"):
        Settings()  # type: ignore[call-arg]


def test_new_item_reaches_similar_users(tiny_dataset: Path, tmp_path: Path) -> None:
    """A new item's text like a category's items → recommended to a history of that category."""
    from tests.helpers.bundles import train_tiny

    store = tmp_path / "store"
    train_tiny(tiny_dataset, store, fusion="text", epochs=1)
    items = _items(store)
    category = items["category"].value_counts().index[0]
    same = items[items["category"] == category]
    history = same["item_id"].tolist()[:10]
    source = same.iloc[len(history) - 1]
    new = {
        "item_id": "brand-new-2",
        "title": str(source["title"]),
        "description": str(source["description"]),
        "category": str(category),
    }
    with TestClient(create_app(make_settings(store))) as c:
        before = c.post("/v1/recommend", json={"history": history, "k": 10}).json()
        assert "brand-new-2" not in {i["item_id"] for i in before["items"]}
        assert c.post("/v1/items", headers=AUTH, json={"items": [new]}).status_code == 200
        after = c.post("/v1/recommend", json={"history": history, "k": 10}).json()
        assert "brand-new-2" in [i["item_id"] for i in after["items"]], after


def test_search_through_the_text_index_matches_the_exact_scan(
    tiny_store: Path, tmp_path: Path
) -> None:
    from indexer.build import IndexParams
    from indexer.publish import index_bundle

    exact_store = copy_store(tiny_store, tmp_path / "exact")
    ann_store = copy_store(tiny_store, tmp_path / "ann")
    index_bundle(ann_store, kind="flat", device="cpu", params=IndexParams(text_index_min_items=0))
    items = _items(ann_store)
    queries = [
        format_item_text(items.iloc[i].to_dict(), ["title", "category"])[:512]
        for i in (0, 41, 99, 250)
    ] + ["bright", "a quiet story"]
    with (
        TestClient(create_app(make_settings(exact_store))) as exact,
        TestClient(create_app(make_settings(ann_store))) as ann,
    ):
        assert exact.get("/readyz").json()["search_index"] == "exact scan"
        assert ann.get("/readyz").json()["search_index"] == f"ivfpq ({len(items)} items)"
        for q in queries:  # the text index is the dense side: compared in dense mode
            body = {"query": q, "k": 5, "mode": "dense"}
            want = exact.post("/v1/search", json=body).json()["items"]
            got = ann.post("/v1/search", json=body).json()["items"]
            assert [i["item_id"] for i in got] == [i["item_id"] for i in want], q
            assert [i["score"] for i in got] == pytest.approx([i["score"] for i in want], abs=1e-5)
        source = items.iloc[7]
        new = {
            "item_id": "ann-new",
            "title": str(source["title"]) + " returns",
            "category": str(source["category"]),
        }
        r = ann.post("/v1/items", headers=AUTH, json={"items": [new]})
        assert r.status_code == 200, r.text
        query = format_item_text(new, ["title", "category"])
        found = ann.post("/v1/search", json={"query": query, "k": 3}).json()["items"]
        assert "ann-new" in {i["item_id"] for i in found}
        # added to the live text index in place (no bundle copy)
        assert ann.get("/readyz").json()["search_index"] == f"ivfpq ({len(items) + 1} items)"
