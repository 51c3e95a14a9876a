"""Report tables and pages: one ``Table`` rendered as Markdown (terminal, ``.md``) or as
HTML, and a self-contained HTML page (inline style, figures as relative ``<img>`` links)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d2330; max-width: 1100px;
  margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d9dee7; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f2f4f7; } td:first-child, th:first-child { text-align: left; }
caption { text-align: left; color: #667085; padding-bottom: 0.3rem; }
img { max-width: 100%; border: 1px solid #d9dee7; }
pre { background: #f7f8fa; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.muted { color: #667085; }
"""


@dataclass
class Table:
    """A table of already formatted cells."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""

    def markdown(self) -> list[str]:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        return [line(self.header), "|" + "---|" * len(self.header), *map(line, self.rows)]

    def html(self) -> str:
        caption = f"<caption>{escape(self.caption)}</caption>" if self.caption else ""
        head = "".join(f"<th>{escape(c)}</th>" for c in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def paragraph(text: str, *, muted: bool = False) -> str:
    return f"<p{' class=muted' if muted else ''}>{escape(text)}</p>"


def figure(src: str, alt: str) -> str:
    """A PNG written next to the page, linked relatively (the page and it move together)."""
    return f'<figure><img src="{escape(src)}" alt="{escape(alt)}"></figure>'


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def page(title: str, parts: list[str]) -> str:
    """A complete HTML document; ``parts`` are already escaped fragments from this module."""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
