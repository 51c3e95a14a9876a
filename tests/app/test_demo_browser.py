"""The demo page (/demo) in a real headless browser: Debian's chromium driven by Playwright,
against a live server on the tiny bundle. And /demo is gone when FUSIONREC_DEMO is off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, sync_playwright

from tests.helpers.servers import ADMIN, LiveServer, make_settings

API_KEY = "demo-browser-test-key-0123"
USER = "u1"
NEW_ITEM = "demo-added-1"
NEW_TITLE = "Quantum marmalade telescope for night owls"


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make install-system` installs it (apt chromium)")
    return path


def card_ids(page: Page, grid: str) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        f"{grid} .card", "cards => cards.map(c => c.dataset.itemId)"
    )
    return ids


def wait_rerendered(page: Page, grid: str, before: str | None) -> None:
    page.wait_for_function(
        "([sel, before]) => { const g = document.querySelector(sel);"
        " return g.dataset.renders && g.dataset.renders !== before; }",
        arg=[grid, before],
    )


def test_demo_page_in_chromium(store: Path, tmp_path: Path) -> None:
    headers = {"X-API-Key": API_KEY}
    with LiveServer(make_settings(store, api_keys=[API_KEY])) as server:
        ready = httpx.get(f"{server.url}/readyz").json()
        some_item = "i1"
        some_title = httpx.get(f"{server.url}/v1/items/{some_item}", headers=headers).json()[
            "fields"
        ]["title"]
        for asset, kind in (("", "text/html"), ("/demo.js", "javascript"), ("/demo.css", "css")):
            r = httpx.get(f"{server.url}/demo{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"], asset

        console_errors: list[str] = []
        outside: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                console_errors.append(msg.text)

        def on_request(req: Request) -> None:
            if not req.url.startswith((server.url, "data:")):
                outside.append(req.url)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.on("console", on_console)
                page.on("pageerror", lambda exc: console_errors.append(f"page error: {exc}"))
                page.on("request", on_request)
                # the key the page remembers for this tab (typed in once by a person)
                page.add_init_script(
                    f"sessionStorage.setItem('fusionrec.demo.apiKey', {json.dumps(API_KEY)});"
                    f"localStorage.setItem('fusionrec.demo.userId', {json.dumps(USER)});"
                )
                page.goto(f"{server.url}/demo")
                page.wait_for_selector("body[data-ready=true]")

                # model version and strategy as the service reports them
                assert page.text_content("#model-version") == ready["model_version"]
                assert page.text_content("#strategy") == "personalized"
                assert page.text_content("#catalog-size") == f"{ready['catalog_items']} items"

                # the grid is what POST /v1/recommend answers, with titles, scores, explanations
                served = httpx.post(
                    f"{server.url}/v1/recommend",
                    json={"user_id": USER, "k": 12, "explain": True},
                    headers=headers,
                ).json()
                before = card_ids(page, "#recommendations")
                assert before == [i["item_id"] for i in served["items"]]
                assert len(before) == 12
                page.wait_for_function(
                    "document.querySelectorAll('#recommendations .card[data-title]').length == 12"
                )
                first = page.locator("#recommendations .card").first
                assert first.locator(".score").text_content() == (
                    f"score {served['items'][0]['score']:.4f}"
                )
                first.locator(".why summary").click()
                assert "retrieval score" in (first.locator(".why").inner_text())
                assert "retrieval score" in (first.get_attribute("title") or "")

                # search: the grid is the service's answer for the query and this shopper
                page.fill("#query", some_title)
                page.click("#search-form button")
                page.wait_for_selector("#search-results .card")
                found = httpx.post(
                    f"{server.url}/v1/search",
                    json={"query": some_title, "user_id": USER, "k": 12},
                    headers=headers,
                ).json()
                assert card_ids(page, "#search-results") == [i["item_id"] for i in found["items"]]
                page.wait_for_function(
                    "document.querySelectorAll('#search-results .card[data-title]').length == 12"
                )
                titles = page.eval_on_selector_all(
                    "#search-results .card", "cards => cards.map(c => c.dataset.title)"
                )
                words = set(some_title.lower().split())
                assert any(words & set(t.lower().split()) for t in titles), titles

                # a click posts an event and the grid is fetched again without that item
                clicked = before[0]
                renders = page.get_attribute("#recommendations", "data-renders")
                page.click(f"#recommendations .card[data-item-id='{clicked}'] .pick")
                wait_rerendered(page, "#recommendations", renders)
                after = card_ids(page, "#recommendations")
                assert clicked not in after
                assert after != before
                history = page.text_content("#history-length") or ""
                assert history.endswith(" events") and int(history.split()[0]) >= 1
                again = httpx.post(
                    f"{server.url}/v1/recommend", json={"user_id": USER, "k": 12}, headers=headers
                ).json()
                assert after == [i["item_id"] for i in again["items"]]

                # an admin adds an item: it shows up, by its title, and search finds it
                page.click("#admin summary")
                page.fill("#admin-token", ADMIN)
                page.fill("#new-item-id", NEW_ITEM)
                page.fill("#item-fields input[name=title]", NEW_TITLE)
                page.click("#item-form button")
                added = page.locator(f"#added-items .card[data-item-id='{NEW_ITEM}']")
                added.wait_for()
                page.wait_for_function(
                    f"document.querySelector('#added-items .card[data-title]')?.dataset.title"
                    f" === {json.dumps(NEW_TITLE)}"
                )
                assert page.text_content("#catalog-size") == (f"{ready['catalog_items'] + 1} items")
                # a catalog change is a row, not a new model: the version stays
                assert page.text_content("#model-version") == ready["model_version"]
                renders = page.get_attribute("#search-results", "data-renders")
                page.fill("#query", NEW_TITLE)
                page.click("#search-form button")
                wait_rerendered(page, "#search-results", renders)
                assert NEW_ITEM in card_ids(page, "#search-results")

                shot = tmp_path / "demo.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"demo screenshot: {shot}")
                assert shot.stat().st_size > 10_000
            finally:
                browser.close()

        assert console_errors == []
        assert outside == []
        # the added item really is in the service's catalog
        r = httpx.get(f"{server.url}/v1/items/{NEW_ITEM}", headers=headers, timeout=10)
        assert r.json()["fields"]["title"] == NEW_TITLE


def test_demo_is_off_with_the_setting(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONREC_DEMO", "false")
    settings = make_settings(store)
    assert settings.demo is False
    with LiveServer(settings) as server:
        for path in ("/demo", "/demo/", "/demo/demo.js"):
            r = httpx.get(f"{server.url}{path}")
            assert r.status_code == 404, path
        assert httpx.get(f"{server.url}/healthz").status_code == 200
