"""The ``fusionrec`` console script.

`data`, `train`, `evaluate`, `ablate` come from model_store; `index` from indexer; `serve`
from app. Each package registers its own commands, so this module only composes them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="fusionrec: LM + sequential recommender, offline and online.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def build() -> typer.Typer:
    from fusionrec.cli.index import register as register_indexer
    from fusionrec.cli.model import register as register_model
    from fusionrec.cli.serve import register as register_app

    if not app.registered_commands:
        register_model(app)
        register_indexer(app)
        register_app(app)
    return app


def main() -> None:
    build()()
