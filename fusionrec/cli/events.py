"""`fusionrec events export`: the service's event log as a dataset directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import console, fail, out
from model_store.errors import FusionrecError

events_app = typer.Typer(help="The event log the service writes.", no_args_is_help=True)


@events_app.command("export")
def events_export(
    events: Annotated[
        str, typer.Option(help="the log's URL: sqlite:///store/events.db or postgresql+psycopg://…")
    ],
    store: Annotated[Path, typer.Option(help="the store whose CURRENT catalog is exported")],
    out_dir: Annotated[Path, typer.Option("--out", help="dataset directory to write")],
    since: Annotated[
        str | None, typer.Option(help="only events from this time: unix seconds or ISO date")
    ] = None,
) -> None:
    """Write the event log as a dataset directory (interactions.csv with a weight per event
    type, positive events only; items.csv from CURRENT, upserted items included)."""
    from model_store.bundle.io import read_items
    from model_store.events.log import EventStore, export_dataset, parse_since

    try:
        log = EventStore(events)
        try:
            n_events, n_items = export_dataset(
                log, out_dir, items=read_items(store), since=parse_since(since)
            )
        finally:
            log.close()
    except FusionrecError as exc:
        raise fail(exc) from exc
    except Exception as exc:  # a database that cannot be read: say which
        from model_store.database import redact

        console.print(
            f"[bold red]error:[/] cannot read the event log {redact(events)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        )
        raise typer.Exit(code=2) from exc
    out.print(f"{n_events} interactions and {n_items} items written to {out_dir}")
