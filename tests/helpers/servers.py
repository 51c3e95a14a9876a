"""Real servers for tests: uvicorn in a thread, a throw-away redis-server, settings."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.http_protocol import uvicorn_options
from app.main import create_app
from app.settings import Settings
from model_store.privacy.keys import user_hash, user_key

ADMIN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(store: Path, **overrides: Any) -> Settings:
    """Settings of a test server. Writes naming a user are opted in without API keys
    (``allow_anonymous_writes``), as an operator would do explicitly; the tests of the secure
    default pass ``allow_anonymous_writes=False`` (tests/app/test_security.py)."""
    values: dict[str, Any] = {
        "store": store,
        "admin_token": ADMIN,
        "rate_limit_rps": 0,
        "device": "cpu",
        # tests that publish and reload by hand must not race the follower (tests opt in)
        "follow_poll_s": 0,
        "allow_anonymous_writes": True,
    }
    values.update(overrides)
    return Settings(**values)


def store_user_hash(store: Path, user_id: str) -> str:
    """The hash under which a server on ``store`` (no configured key) keeps ``user_id``."""
    return user_hash(user_id, user_key(store))


class LiveServer:
    """A real uvicorn serving ``create_app(settings)`` on a free port, in a thread, with
    the HTTP limits of ``fusionrec serve`` (``app.http_protocol.uvicorn_options``)."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            **uvicorn_options(settings.http),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class RedisServer:
    """A throw-away redis-server on a free port (never the shared one on 6379)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port for the duration of the block."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make test` installs it (make install-system)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServerProcess:
    """``fusionrec``'s app in a uvicorn process of its own (env settings), on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        import os
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FUSIONREC_DEVICE": "cpu", **env}
        self.cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "app.main:app_from_env",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
