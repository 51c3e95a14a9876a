"""What every command module shares: the two consoles, ``fail``, the metrics table, and the
option types more than one command declares (one declaration each)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from model_store.config import Config
from model_store.errors import FusionrecError

# messages and progress on stderr; results on stdout, wide when piped so that metric tables
# are not squeezed into 80 columns
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigFile = Annotated[Path | None, typer.Option(help="JSON config {model, text, train}")]
TextCache = Annotated[Path | None, typer.Option(help="text-embedding cache")]
ColdItems = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.9,
        help="fraction of the catalog held out of training and added back by its text "
        "(0 = none; evaluate takes the value the bundle was trained with)",
    ),
]
ColdSeed = Annotated[int, typer.Option(help="which items --cold-items holds out")]

METRIC_COLUMNS = (
    "recall@10",
    "recall@20",
    "ndcg@10",
    "ndcg@20",
    "mrr@10",
    "hr@10",
    "coverage@10",
    "users",
)


def fail(exc: FusionrecError) -> typer.Exit:
    """Exit status 2 with the error's message (its text names the valid values)."""
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("set")
    for c in METRIC_COLUMNS:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(
            name,
            *[
                ("-" if c not in m else f"{int(m[c])}" if c == "users" else f"{m[c]:.4f}")
                for c in METRIC_COLUMNS
            ],
        )
    return table


def load_config(config: Path | None) -> Config:
    return Config.from_file(config) if config else Config()
