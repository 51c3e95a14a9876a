"""`fusionrec serve`: run the service under uvicorn."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        store: Annotated[
            Path,
            typer.Option(envvar="FUSIONREC_STORE", help="store root with the published bundles"),
        ],
        host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port")] = 8000,
        workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    ) -> None:
        """Serve the REST API (settings: FUSIONREC_* environment variables, REDIS_URL)."""
        import uvicorn
        from pydantic import ValidationError

        from app.http_protocol import uvicorn_options
        from app.middleware import install_log_redaction
        from app.settings import Settings, settings_error_message

        os.environ["FUSIONREC_STORE"] = str(store.resolve())
        try:
            settings = Settings()  # refuse bad settings before forking
        except ValidationError as exc:
            # pydantic's own text echoes every input value, secrets included
            for line in settings_error_message(exc).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(code=2) from None
        if not _loopback(host) and not settings.security.api_keys:
            typer.echo(
                f"warning: serving on {host} (reachable from other machines) without "
                "FUSIONREC_API_KEYS: anyone who can connect can read recommendations"
                + (
                    " and write or erase any user's history (FUSIONREC_ALLOW_ANONYMOUS_WRITES)"
                    if settings.security.allow_anonymous_writes
                    else ""
                )
                + "; set FUSIONREC_API_KEYS or bind 127.0.0.1",
                err=True,
            )
        if workers > 1 and settings.redis.url is None:
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
            server_header=False,
            timeout_graceful_shutdown=10,
            **uvicorn_options(settings.http),
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
