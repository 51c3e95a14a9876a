"""`fusionrec gc` — remove old bundle versions, never CURRENT or one a replica serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import fail, out
from model_store.errors import FusionrecError


def gc(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    keep: Annotated[int, typer.Option(help="newest versions to keep (CURRENT always is)")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would go")] = False,
) -> None:
    """Remove all but the KEEP newest versions; CURRENT and every version a live replica
    reports serving (<store>/serving/) are always kept."""
    from model_store.bundle.retention import collect

    try:
        removed, kept = collect(store, keep, dry_run=dry_run)
    except FusionrecError as exc:
        raise fail(exc) from exc
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}; "
        f"kept {', '.join(kept)}",
        highlight=False,
    )
