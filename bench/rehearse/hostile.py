"""The hostile client, from its own address: malformed and oversized requests, bad
credentials, non-finite numbers, control characters and lone surrogates in ids. Each case
names the answers that are acceptable (a 4xx that says what is wrong); a 2xx or a 5xx is a
failure of that case. Its shoppers are ``rh-hostile-*``: none of their events may reach the
log."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from bench.rehearse.client import Http

REFUSED = frozenset({400, 401, 403, 404, 405, 413, 422, 429})
BIG = 2 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    endpoint: str
    body: bytes | None
    headers: dict[str, str]
    ok: frozenset[int] = REFUSED


def _event(ts: str = "1700000000.0", *, user: str = '"rh-hostile-1"', item: str) -> bytes:
    return f'{{"user_id": {user}, "item_id": {item}, "timestamp": {ts}}}'.encode()


def cases(shopper_key: str, admin_token: str, admin_key: str, item: str) -> list[Case]:
    key = {"x-api-key": shopper_key, "content-type": "application/json"}
    admin = {**key, "authorization": f"Bearer {admin_token}", "x-api-key": admin_key}
    json_ = {"content-type": "application/json"}
    big_in = json.dumps({"history": [item], "filter": {"title": {"in": ["x" * 90] * 10_000}}})
    big_contains = json.dumps({"query": "star", "filter": {"title": {"contains": "y" * 900_000}}})
    batch = json.dumps({"events": [{"user_id": "rh-hostile-9", "item_id": item}] * 1001})
    real = json.dumps(item)  # an item of the catalog: only the broken field is wrong

    def ev(timestamp: str) -> bytes:
        return _event(timestamp, item=real)

    nul_item = _event(item=json.dumps(item + "\x00x"))
    nul_user = _event(user='"rh-\\u0000"', item=real)

    return [
        Case("malformed_json", "POST", "/v1/recommend", "recommend", b'{"user_id": ', key),
        Case("oversized_body", "POST", "/v1/recommend", "recommend", b" " * BIG, key),
        Case("k_too_large", "POST", "/v1/recommend", "recommend", b'{"k": 1000000000}', key),
        Case("no_api_key", "POST", "/v1/recommend", "recommend", b'{"k": 5}', json_),
        Case("bad_api_key", "POST", "/v1/search", "search", b'{"query": "star"}',
             {**json_, "x-api-key": "not-a-key"}),
        Case("bad_admin_token", "POST", "/v1/items", "admin_write",
             b'{"items": [{"item_id": "rh-hostile-item", "title": "x"}]}',
             {**key, "authorization": "Bearer wrong-token-0123456789"}),
        Case("nan_timestamp", "POST", "/v1/events", "event", ev("NaN"), key),
        Case("infinite_timestamp", "POST", "/v1/events", "event", ev("Infinity"), key),
        Case("negative_infinity", "POST", "/v1/events", "event", ev("-Infinity"), key),
        Case("huge_timestamp", "POST", "/v1/events", "event", ev("1e400"), key),
        Case("far_future_timestamp", "POST", "/v1/events", "event", ev("4102444800e3"), key),
        Case("nul_item_id", "POST", "/v1/events", "event", nul_item, key),
        Case("nul_user_id", "POST", "/v1/events", "event", nul_user, key),
        Case("lone_surrogate", "POST", "/v1/events", "event", _event(item='"\\ud800"'), key),
        Case("nul_upsert_id", "POST", "/v1/items", "admin_write",
             b'{"items": [{"item_id": "rh-\\u0000bad", "title": "nul"}]}', admin),
        # the item a careless upsert let in: its events must not wedge the log either
        Case("event_of_nul_item", "POST", "/v1/events", "event",
             _event(item='"rh-\\u0000bad"'), key),
        Case("huge_in_filter", "POST", "/v1/recommend", "recommend", big_in.encode(), key),
        Case("huge_contains_filter", "POST", "/v1/search", "search", big_contains.encode(), key),
        Case("batch_too_large", "POST", "/v1/events:batch", "events_batch", batch.encode(), key),
        Case("unknown_route", "GET", "/v1/nothing-here", "other", None, key),
        Case("wrong_method", "PUT", "/v1/recommend", "recommend", b"{}", key),
    ]  # fmt: skip


class Hostile:
    def __init__(self, http: Http, all_cases: list[Case]) -> None:
        self.http = http
        self.cases = all_cases
        self._next: Callable[[], Case] = itertools.cycle(all_cases).__next__

    async def tick(self) -> None:
        case = self._next()
        await self.http.call(
            case.method, case.path, case.endpoint, content=case.body, headers=case.headers,
            case=case.name,
        )  # fmt: skip
