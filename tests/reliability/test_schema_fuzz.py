"""Schemathesis against the live OpenAPI schema of a real uvicorn: every operation, admin
ones with the bearer token, valid and invalid inputs, a fixed seed and a few examples each.

Checked on every response: no 5xx (``not_a_server_error``), a body that matches the
documented schema for its status (``response_schema_conformance``) and a documented content
type (``content_type_conformance``). Undocumented 4xx statuses (401, 404, 409, 413, 429) are
deliberate answers of the service and are not counted as failures.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.helpers.servers import AUTH, LiveServer, make_settings

EXAMPLES = 8  # per operation and generation mode
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
OPERATIONS = {
    "POST /v1/recommend",
    "POST /v1/search",
    "POST /v1/items",
    "GET /v1/items/{item_id}",
    "GET /v1/items",
    "POST /v1/items:batchGet",
    "GET /v1/items/{item_id}/similar",
    "POST /v1/items/{item_id}/similar",
    "PATCH /v1/items/{item_id}",
    "DELETE /v1/items/{item_id}",
    "POST /v1/events",
    "DELETE /v1/users/{user_id}",
    "POST /admin/reload",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}


def fuzz(
    op: Any, mode: GenerationMode, url: str, failures: list[str], statuses: Counter[str]
) -> int:
    """Run ``EXAMPLES`` cases of one operation; failures are collected, not raised."""
    calls = 0

    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        statuses[f"{op.label} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # every failure is reported at the end
            failures.append(f"{op.label} [{mode.value}] {response.status_code}: {str(exc)[:400]}")

    run()
    return calls


def test_live_openapi_fuzzing(store: Path) -> None:
    with LiveServer(make_settings(store)) as srv:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= OPERATIONS
        failures: list[str] = []
        no_negative: list[str] = []
        calls = 0
        statuses: Counter[str] = Counter()
        for op in operations:
            calls += fuzz(op, GenerationMode.POSITIVE, srv.url, failures, statuses)
            try:
                calls += fuzz(op, GenerationMode.NEGATIVE, srv.url, failures, statuses)
            except hypothesis.errors.Unsatisfiable:
                no_negative.append(op.label)  # no input that could be made invalid
    assert calls >= len(operations) * EXAMPLES, calls
    # both accepted and rejected inputs reached the service
    assert statuses["POST /v1/recommend 200"] and statuses["POST /v1/recommend 422"], statuses
    assert statuses["POST /admin/reload 200"], statuses  # the token was accepted
    assert not failures, "\n".join(failures[:10])
    assert not {"POST /v1/recommend", "POST /v1/search", "POST /v1/events"} & set(no_negative)
