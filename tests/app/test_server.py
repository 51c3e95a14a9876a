"""Against a real uvicorn: streamed bodies, and hot reload under concurrent load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx

from model_store import bundle as bundle_mod
from tests.app.conftest import AUTH, LiveServer, clone_version, make_settings


def test_streamed_oversized_body_is_413(store: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"history": ['
        for _ in range(30):
            yield b'"i1",' * 8000  # no Content-Length: chunked transfer encoding
        yield b'"i1"]}'

    with LiveServer(make_settings(store, max_body_bytes=64 * 1024)) as srv:
        r = httpx.post(f"{srv.url}/v1/recommend", content=chunks(),
                       headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 413 and "65536" in r.json()["error"]["message"]
        ok = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["i1"]}, timeout=10)
        assert ok.status_code == 200


def test_hot_reload_under_load_has_zero_failures(store: Path) -> None:
    first = bundle_mod.current_version(store)
    with LiveServer(make_settings(store)) as srv:

        async def client_loop(c: httpx.AsyncClient, n: int, out: list[tuple[int, str]]) -> None:
            for i in range(n):
                body = {"history": [f"i{(n + i) % 300}", f"i{i % 300}"], "k": 5}
                r = await c.post("/v1/recommend", json=body)
                out.append((r.status_code, r.json().get("model_version", r.text)))

        async def main() -> tuple[list[tuple[int, str]], list[str]]:
            results: list[tuple[int, str]] = []
            published: list[str] = []
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                load = [asyncio.create_task(client_loop(c, 40, results)) for _ in range(6)]
                for _ in range(3):
                    await asyncio.sleep(0.15)
                    published.append(await asyncio.to_thread(clone_version, store))
                    r = await c.post("/admin/reload", headers=AUTH)
                    assert r.status_code == 200 and r.json()["reloaded"], r.text
                await asyncio.gather(*load)
            return results, published

        results, published = asyncio.run(main())
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    seen = {v for _, v in results}
    assert seen <= {first, *published}
    assert len(seen) >= 2, seen  # requests were answered by more than one bundle
