"""`fusionrec events export` (the service's event log as a dataset directory) and
`fusionrec events import` (a dataset directory into the log)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import console, fail, out
from fusionrec.forgotten import RedisUrlOption, UserKeySecretOption, forgotten_users
from model_store.errors import ConfigError, FusionrecError

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
        raise _database_error("read", events, exc) from exc
    out.print(f"{n_events} interactions and {n_items} items written to {out_dir}")


def _database_error(verb: str, events: str, exc: Exception) -> typer.Exit:
    from model_store.database import redact

    console.print(
        f"[bold red]error:[/] cannot {verb} the event log {redact(events)}: "
        f"{type(exc).__name__}: {redact(str(exc).splitlines()[0][:200])}",
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(code=2)


@events_app.command("import")
def events_import(
    events: Annotated[
        str, typer.Option(help="the log's URL: sqlite:///store/events.db or postgresql+psycopg://…")
    ],
    data: Annotated[Path, typer.Option(help="dataset directory (interactions + items)")],
    store: Annotated[
        Path | None,
        typer.Option(help="the store the service serves: its user key hashes the user ids"),
    ] = None,
    redis_url: RedisUrlOption = None,
    user_key_secret: UserKeySecretOption = None,
) -> None:
    """Import a dataset directory's interactions into the event log, user ids hashed as the
    service hashes them (the store's user key, or --user-key-secret). Idempotent: each
    interaction's event id is derived from user, item, timestamp and type, so importing
    twice stores it once. Users forgotten on the store are left out."""
    from model_store.events.importer import import_dataset
    from model_store.events.log import EventStore
    from model_store.privacy.keys import user_hash, user_key

    try:
        if store is None and not user_key_secret:
            raise ConfigError(
                "events import needs --store (the service's store, whose user key hashes "
                "user ids) or --user-key-secret (FUSIONREC_USER_KEY_SECRET): the log never "
                "holds raw user ids"
            )
        key = user_key(store or Path("."), user_key_secret)
        gone: frozenset[str] = frozenset()
        if store is not None:
            forgotten = forgotten_users(store, redis_url=redis_url, user_key_secret=user_key_secret)
            gone = forgotten.hashes
        log = EventStore(events)
        try:
            done = import_dataset(log, data, lambda u: user_hash(u, key), gone)
        finally:
            log.close()
    except FusionrecError as exc:
        raise fail(exc) from exc
    except Exception as exc:  # a database that cannot be written: say which
        raise _database_error("write", events, exc) from exc
    rate = done.rows / done.seconds if done.seconds > 0 else 0.0
    out.print(
        f"{done.rows} interactions imported from {data}: {done.new} new events, "
        f"{done.rows - done.new} already in the log ({done.seconds:.1f} s, {rate:,.0f} events/s)"
    )
