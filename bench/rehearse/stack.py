"""The deployed shape as plain processes on free ports: PostgreSQL (event log and catalog),
Redis (configured as in docker-compose.yml), two API replicas started by the api
container's own command (``deploy/api-serve.sh``) on one store, nginx in front (the
project's configuration), and the retrain job (``fusionrec retrain --every``)."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from bench.rehearse.nginx import Nginx
from bench.rehearse.plan import ROOT
from tests.helpers.postgres import PostgresServer
from tests.helpers.servers import free_port

BIN = Path(sys.executable).parent


def fusionrec_bin() -> str:
    local = BIN / "fusionrec"
    return str(local) if local.exists() else "fusionrec"


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def compose_redis_args() -> list[str]:
    """redis-server's arguments from docker-compose.yml (``${VAR:-default}`` → default)."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = str(spec["services"]["redis"]["command"])
    command = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", command)
    return shlex.split(command)[1:]


class Redis:
    """redis-server as compose runs it (append-only file: a restart keeps the data)."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [*compose_redis_args(), "--port", str(self.port), "--bind", "127.0.0.1"]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.dir)], stdout=log, stderr=log
        )
        _wait_port(self.port, 15, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
            self.proc.wait(20)


@dataclass
class Secrets:
    admin_token: str = field(default_factory=lambda: "rehearsal-admin-" + secrets.token_hex(8))
    shopper_key: str = field(default_factory=lambda: "shop-" + secrets.token_hex(12))
    admin_key: str = field(default_factory=lambda: "back-" + secrets.token_hex(12))
    user_key: str = field(default_factory=lambda: "rehearsal-user-key-" + secrets.token_hex(8))


class Replica:
    """One api replica: ``deploy/api-serve.sh`` (the container's command) on a free port."""

    def __init__(self, name: str, env: dict[str, str], work: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.addr = f"127.0.0.1:{self.port}"
        self.env = {**env, "FUSIONREC_PORT": str(self.port), "FUSIONREC_HOST": "127.0.0.1"}
        self.log = work / f"replica-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "api-serve.sh")],
            env=self.env, stdout=log, stderr=log, cwd=ROOT,
        )  # fmt: skip
        self.starts += 1

    def wait_ready(self, timeout_s: float = 240) -> float:
        """Seconds until /readyz answered 200."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"replica {self.name} exited ({self.proc.returncode}); {self.log}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"replica {self.name} not ready after {timeout_s:.0f} s; {self.log}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


class Stack:
    def __init__(self, work: Path, store: Path) -> None:
        self.work = work
        self.store = store
        self.secrets = Secrets()
        self.postgres: PostgresServer | None = None
        self.redis = Redis(work)
        self.replicas: list[Replica] = []
        self.nginx: Nginx | None = None
        self.retrainer: subprocess.Popen[bytes] | None = None

    @property
    def events_url(self) -> str:
        assert self.postgres is not None
        return self.postgres.url

    def env(self) -> dict[str, str]:
        s = self.secrets
        return {
            **os.environ,
            "FUSIONREC_BIN": fusionrec_bin(),
            "FUSIONREC_STORE": str(self.store),
            "FUSIONREC_WORKERS": "1",
            "FUSIONREC_DEVICE": "cpu",
            "REDIS_URL": self.redis.url,
            "FUSIONREC_EVENTS_URL": self.events_url,
            "FUSIONREC_API_KEYS": f"{s.shopper_key},{s.admin_key}",
            "FUSIONREC_ADMIN_TOKEN": s.admin_token,
            "FUSIONREC_USER_KEY_SECRET": s.user_key,
            # as in docker-compose.yml: nginx limits per client, the replicas trust it
            "FUSIONREC_RATE_LIMIT_RPS": "0",
            "FUSIONREC_FORWARDED_ALLOW_IPS": "*",
            "FUSIONREC_REDIS_TIMEOUT_S": "0.05",
            "FUSIONREC_FOLLOW_POLL_S": "1",
        }

    def start_databases(self) -> None:
        self.postgres = PostgresServer()
        self.postgres.start()
        self.redis.start()

    def start_service(self) -> dict[str, float]:
        env = self.env()
        self.replicas = [Replica(n, env, self.work) for n in ("a", "b")]
        ready: dict[str, float] = {}
        for r in self.replicas:  # one at a time: two cold starts at once on 2 cores is slow
            r.start()
            ready[r.name] = r.wait_ready()
        self.nginx = Nginx(self.work / "nginx", [r.port for r in self.replicas], free_port())
        self.nginx.start()
        return ready

    def start_retrainer(self, every_s: float, config: Path, margin: float = 0.005) -> None:
        cmd = [
            fusionrec_bin(), "retrain", "--store", str(self.store), "--events", self.events_url,
            "--every", f"{every_s:.0f}s", "--config", str(config), "--no-final",
            "--margin", str(margin),
        ]  # fmt: skip
        env = {**self.env(), "FUSIONREC_THREADS": "1", "COLUMNS": "200"}
        log = open(self.work / "retrain.log", "ab")  # noqa: SIM115
        self.retrainer = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)

    def stop(self) -> None:
        if self.retrainer is not None and self.retrainer.poll() is None:
            self.retrainer.terminate()
            try:
                self.retrainer.wait(20)
            except subprocess.TimeoutExpired:
                self.retrainer.kill()
        if self.nginx is not None:
            self.nginx.stop()
        for r in self.replicas:
            r.stop()
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.remove()
