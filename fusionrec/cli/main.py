"""The ``fusionrec`` console script: one module per command group, assembled here.

`data` (``data``), `train` (``train``), `evaluate`/`ablate`/`report` (``evaluate``),
`index` (``index``), `events` (``events``), `retrain` (``retrain``), `gc` (``gc``), `catalog`
(``catalog``) and `serve` (``serve``);
shared consoles, ``fail`` and option types live in ``common``.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    help="fusionrec: LM + sequential recommender, offline and online.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def build() -> typer.Typer:
    """The app with every command registered (once, however often it is called)."""
    from fusionrec.cli import serve
    from fusionrec.cli.catalog import catalog_app
    from fusionrec.cli.data import data_app
    from fusionrec.cli.evaluate import ablate, evaluate, report
    from fusionrec.cli.events import events_app
    from fusionrec.cli.gc import gc
    from fusionrec.cli.index import index_app
    from fusionrec.cli.retrain import retrain
    from fusionrec.cli.train import train

    if not app.registered_commands:
        logging.basicConfig(level=logging.WARNING)
        app.add_typer(data_app, name="data")
        app.add_typer(events_app, name="events")
        for command in (train, evaluate, ablate, retrain, report, gc):
            app.command()(command)
        app.add_typer(index_app, name="index")
        app.add_typer(catalog_app, name="catalog")
        serve.register(app)
    return app


def main() -> None:
    build()()
