"""Events at the door, through a real server into a real SQLite or PostgreSQL log:
non-finite, out-of-range and control-character events are 422s naming the field and never
reach the log, which keeps writing; POST /v1/events:batch answers per event; answers carry
a request_id that events name; the log's health is in /readyz and /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_store.events.log import EventStore
from tests.helpers.postgres import postgres_server
from tests.helpers.servers import LiveServer, make_settings, store_user_hash

HOSTILE = [  # (raw JSON body, the field the 422 must name)
    ('{"user_id": "h", "item_id": "i1", "timestamp": NaN}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "timestamp": Infinity}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "timestamp": -Infinity}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "timestamp": 1e400}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "timestamp": 4102444800e3}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "timestamp": 12}', "timestamp"),
    ('{"user_id": "h", "item_id": "i1", "value": NaN}', "value"),
    ('{"user_id": "h\\u0000", "item_id": "i1"}', "user_id"),
    ('{"user_id": "h", "item_id": "i1\\u0000x"}', "item_id"),
    ('{"user_id": "h", "item_id": "\\ud800"}', "item_id"),
    ('{"user_id": "h", "item_id": "i1", "request_id": "a b"}', "request_id"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def events_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    with postgres_server() as server:
        yield server.url


def post(c: httpx.Client, path: str, raw: str) -> httpx.Response:
    return c.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def test_hostile_events_are_422_naming_the_field_and_the_log_keeps_writing(
    store: Path, events_url: str
) -> None:
    settings = make_settings(store, events_url=events_url)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for raw, field in HOSTILE:
            r = post(c, "/v1/events", raw)
            assert r.status_code == 422, (raw, r.text)
            assert field in r.json()["error"]["message"], (raw, r.text)
        ok = c.post("/v1/events", json={"user_id": "ann", "item_id": "i1", "timestamp": 1.7e9})
        assert ok.status_code == 200, ok.text
        ready = c.get("/readyz").json()["event_log"]
        assert ready["spooled_events"] == 0 and ready["quarantined_events"] == 0
        assert ready["healthy"] is True
        metrics = c.get("/metrics").text
        assert re.search(r"^fusionrec_events_spooled 0\.0$", metrics, re.M)
        assert re.search(r"^fusionrec_events_quarantined 0\.0$", metrics, re.M)
    frame = EventStore(events_url).frame()
    assert frame["user_key"].tolist() == [store_user_hash(store, "ann")]  # nothing of "h"


def test_batch_answers_per_event_and_records_the_valid_ones(store: Path, events_url: str) -> None:
    settings = make_settings(store, events_url=events_url)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        answer = c.post("/v1/recommend", json={"user_id": "ann", "k": 3}).json()
        rid = answer["request_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
        search = c.post("/v1/search", json={"query": "a", "k": 3}).json()
        assert re.fullmatch(r"[0-9a-f]{32}", search["request_id"]) and search["request_id"] != rid
        raw = (
            '{"events": ['
            f'{{"user_id": "ann", "item_id": "i1", "type": "click", "request_id": "{rid}"}},'
            '{"user_id": "ann", "item_id": "i2", "timestamp": NaN},'
            '{"user_id": "ann", "item_id": "no-such-item"},'
            '{"user_id": "bob", "item_id": "i3", "type": "love"},'
            '{"user_id": "bob", "item_id": "i4", "timestamp": 1700000000.25}'
            "]}"
        )
        r = post(c, "/v1/events:batch", raw)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["accepted"], body["refused"]) == (2, 3)
        results = body["results"]
        assert [x["index"] for x in results] == [0, 1, 2, 3, 4]
        assert [x["accepted"] for x in results] == [True, False, False, False, True]
        assert "timestamp" in results[1]["error"]
        assert "no-such-item" in results[2]["error"]
        assert "'love'" in results[3]["error"]
        assert results[0]["history_length"] >= 1
        too_many = {"events": [{"user_id": "x", "item_id": "i1"}] * 1001}
        assert c.post("/v1/events:batch", json=too_many).status_code == 422
        assert c.post("/v1/events:batch", json={"events": []}).status_code == 422
        spec = c.get("/openapi.json").json()["paths"]["/v1/events:batch"]["post"]
        assert {"200", "422", "503"} <= set(spec["responses"])
    frame = EventStore(events_url).frame()
    assert frame["item_id"].tolist() == ["i1", "i4"]
    assert frame["request_id"].iloc[0] == rid
    assert frame["timestamp"].iloc[1] == 1700000000.25
    assert frame["timestamp"].iloc[0] > time.time() - 600  # stamped on arrival
