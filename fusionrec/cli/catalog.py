"""`fusionrec catalog import|export` — the catalog table in bulk (model_store.catalog.transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import fail, out
from fusionrec.cli.index import DbOption, check_device, db_url
from model_store.errors import FusionrecError

catalog_app = typer.Typer(help="Import or export the catalog (the catalog table).")


@catalog_app.command("import")
def import_cmd(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    data: Annotated[Path, typer.Option(help="directory with items.csv or items.parquet")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    events: DbOption = None,
) -> None:
    """Upsert every item of DATA's items file as one catalog change (all or nothing);
    replicas apply it live."""
    from fusionrec.cli.progress import encode_progress
    from model_store.catalog.transfer import import_items

    try:
        with encode_progress("encoding items") as progress:
            seq, n = import_items(
                store, db_url(events), data, device=check_device(device), progress=progress
            )
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"catalog change {seq}: imported {n} item(s)", highlight=False)


@catalog_app.command("export")
def export_cmd(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for items.csv")],
    events: DbOption = None,
) -> None:
    """Write the catalog as the replicas serve it (CURRENT + the table's changes)."""
    from model_store.catalog.transfer import export_items

    try:
        path, n, seq = export_items(store, db_url(events), out_dir)
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"wrote {path}: {n} item(s), catalog at change {seq}", highlight=False)
