"""Schemathesis against the live OpenAPI schema of a real uvicorn, with every check and
every phase: examples, coverage, fuzzing (valid and invalid inputs) and stateful sequences
that follow the links between operations; admin operations with the bearer token.

Every check (``--checks all``) means, among others: no 5xx, every status code documented,
every body as documented for its status, schema-valid requests accepted, schema-violating
ones rejected, ``Allow`` on a 405 listing every documented method of the path. The schema
is the one the service serves for its catalog (``app.openapi``). Deterministic generation,
so a failure reproduces; the run takes about 40 s on two cores.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers.servers import ADMIN, LiveServer, make_settings

EXAMPLES = 45  # per operation and phase: over 2,000 cases in all
MIN_CASES = 2000
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


def schemathesis_cli() -> str:
    found = Path(sys.executable).with_name("schemathesis")
    return str(found) if found.exists() else (shutil.which("schemathesis") or "schemathesis")


def test_live_openapi_fuzzing_with_every_check(store: Path, tmp_path: Path) -> None:
    with LiveServer(make_settings(store)) as srv:
        doc = httpx.get(f"{srv.url}/openapi.json").json()
        ops = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
        assert ops >= OPERATIONS, OPERATIONS - ops
        run = subprocess.run(
            [
                schemathesis_cli(),
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                f"{srv.url}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--header",
                f"Authorization: Bearer {ADMIN}",
                "--max-examples",
                str(EXAMPLES),
                "--generation-deterministic",
                "--workers",
                "1",
                "--request-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            check=False,
        )
    out = run.stdout + run.stderr
    summary = out[out.find("SUMMARY") :] if "SUMMARY" in out else out[-3000:]
    failures = out[out.find("FAILURES") :] if "FAILURES" in out else ""
    assert run.returncode == 0, (failures[:8000] + "\n" + summary[-3000:]).strip()
    assert "No issues found" in out, summary
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases is not None, summary
    assert int(cases.group(1)) == int(cases.group(2)) >= MIN_CASES, cases.group(0)
    assert f"Selected: {len(ops)}/{len(ops)}" in out and "Stateful" in out, summary
    assert not re.search(r"API Links:\s+0 covered", out), summary  # links were followed
