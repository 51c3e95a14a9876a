"""The HTML reports of `fusionrec train` (report.html in the bundle) and `fusionrec ablate`
(ablation.html next to ablation.png), read back with an HTML parser; `fusionrec report`."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from typer.testing import CliRunner

from fusionrec.cli.main import build
from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.pages import Table, page

runner = CliRunner()


class Page(HTMLParser):
    """The tables (caption, header + rows of cell texts) and image sources of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "caption":
            self._caption = []
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "caption" and self._caption is not None:
            self.tables[-1] = ("".join(self._caption), self.tables[-1][1])
            self._caption = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._caption):
            if sink is not None:
                sink.append(data)

    def table(self, caption_start: str) -> list[list[str]]:
        found = [rows for caption, rows in self.tables if caption.startswith(caption_start)]
        assert len(found) == 1, (caption_start, [c for c, _ in self.tables])
        return found[0]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of cells, without the --- line."""
    tables: list[list[list[str]]] = []
    previous = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not set(line) <= set("|-"):
            if not previous:
                tables.append([])
            tables[-1].append([c.strip() for c in line.strip("|").split(" | ")])
        previous = is_row
    return tables


def test_a_table_is_escaped_and_the_same_in_markdown_and_html() -> None:
    t = Table(["name", "value"], [["<b>a|b</b>", "1.0000"]], "caption & more")
    html = page("t <1>", [t.html()])
    parsed = Page(html)
    assert parsed.tables == [("caption & more", [["name", "value"], ["<b>a|b</b>", "1.0000"]])]
    assert "<b>a" not in html and "&lt;b&gt;a|b" in html and "<title>t &lt;1&gt;" in html
    assert t.markdown() == ["| name | value |", "|---|---|", "| <b>a\\|b</b> | 1.0000 |"]


def test_train_writes_a_report_into_the_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    app = build()
    store = tmp_path / "store"
    res = runner.invoke(
        app, ["train", "--data", str(tiny_dataset), "--store", str(store), "--epochs", "3"]
    )
    assert res.exit_code == 0, res.output
    version = store_mod.current_version(store)
    bundle = store / version
    report = bundle / "report.html"
    assert f"report: {report}" in res.output
    manifest = bundle_mod.read_manifest(bundle)
    # part of the bundle: hashed like the weights, so verify() covers it
    assert {"report.html", "training.png"} <= set(manifest.files)
    bundle_mod.verify(bundle, manifest)

    parsed = Page(report.read_text())
    valid = parsed.table("validation")
    assert valid[0] == ["metric", "value"]
    assert {k: float(v) for k, v in valid[1:]} == {
        k: round(v, 4) for k, v in manifest.metrics.valid.items()
    }
    assert "ndcg@10" in dict(valid[1:])
    epochs = parsed.table("every epoch")
    assert len(epochs) - 1 == manifest.metrics.epochs_run
    col = epochs[0].index("valid_ndcg@10")
    assert [float(r[col]) for r in epochs[1:]] == [
        round(row["valid_ndcg@10"], 4) for row in manifest.metrics.history
    ]
    assert parsed.table("the fusion head")[1] == [
        "reranks",
        "yes" if manifest.rerank.enabled else "no",
    ]
    assert parsed.images == ["training.png"]
    png = bundle / parsed.images[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000

    res = runner.invoke(app, ["report", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(report)
    res = runner.invoke(app, ["report", "--store", str(store), "--version", "v-nope"])
    assert res.exit_code == 2 and "v-nope" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["report"])
    assert res.exit_code == 2 and "exactly one of --store" in res.output


def test_ablate_writes_an_html_report_with_the_tables(tiny_dataset: Path, tmp_path: Path) -> None:
    app = build()
    out = tmp_path / "reports"
    res = runner.invoke(
        app,
        [
            "ablate",
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--strategies",
            "id,joint",
            "--epochs",
            "2",
            "--cold-items",
            "0.1",
        ],
    )
    assert res.exit_code == 0, res.output
    html = out / "ablation.html"
    assert f"report: {html}" in res.output
    parsed = Page(html.read_text())
    assert parsed.images == ["ablation.png"] and (out / "ablation.png").is_file()

    # every table of ablation.md is in the page, cell for cell, in the same order
    md = markdown_tables((out / "ablation.md").read_text())
    assert [rows for _, rows in parsed.tables] == md
    for caption in ("warm", "long tail", "short histories", "cold items"):
        test_table = next(rows for c, rows in parsed.tables if c.startswith(caption))
        assert [r[0] for r in test_table[1:]] == ["id", "joint"]
    cold = next(rows for c, rows in parsed.tables if c.startswith("cold items"))
    assert cold[0][-1] == "cold share of top-20 slots"
    assert 0.0 <= float(cold[1][-1]) <= 1.0
    paired = next(rows for c, rows in parsed.tables if c.startswith("joint against"))
    assert paired[1][:2] == ["warm", "id"]

    res = runner.invoke(app, ["report", "--ablation", str(out)])
    assert res.exit_code == 0 and res.output.strip() == str(html)
    res = runner.invoke(app, ["report", "--ablation", str(tmp_path)])
    assert res.exit_code == 2 and "no ablation.html" in res.output
