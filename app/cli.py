"""`fusionrec serve`: run the service under uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        store: Annotated[Path, typer.Option(help="store root with the published bundles")],
        host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port")] = 8000,
        workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    ) -> None:
        """Serve the REST API (settings: FUSIONREC_* environment variables, REDIS_URL)."""
        import uvicorn
        from pydantic import ValidationError

        from app.middleware import install_log_redaction
        from app.settings import Settings

        os.environ["FUSIONREC_STORE"] = str(store.resolve())
        try:
            settings = Settings()  # refuse bad settings before forking
        except ValidationError as exc:
            typer.echo(f"error: invalid settings:\n{exc}", err=True)
            raise typer.Exit(code=2) from exc
        if workers > 1 and settings.redis_url is None:
            typer.echo(
                "warning: with --workers > 1 and no REDIS_URL each worker keeps its own "
                "histories and cache; set REDIS_URL to share them",
                err=True,
            )
        install_log_redaction()
        uvicorn.run(
            "app.main:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
