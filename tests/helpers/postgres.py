"""A throw-away PostgreSQL server (Debian's ``postgresql``) on a free port, for tests.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user the Debian package creates — and that user must be able to reach
its data directory. A clone may live where it cannot (``/root`` is mode 700), so as root
the cluster goes into a private directory of the system's temporary directory, owned by
``postgres`` and removed when the server is; otherwise it lives under the repository's
``.cache/``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa

from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: `make install-system` installs postgresql"
        )
    return found[-1]


class PostgresServer:
    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            self.dir = Path(tempfile.mkdtemp(prefix="fusionrec-pg-"))
        else:
            base = ROOT / ".cache" / "pg-tests"
            base.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(dir=base))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            _bin("initdb"), "-D", str(self.data), "-U", "fusionrec", "--auth=trust", "-E", "UTF8"
        )
        self.url = f"postgresql+psycopg://fusionrec@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        subprocess.run(full, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(
            _bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        engine = sa.create_engine(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                with engine.connect():
                    break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        engine.dispose()

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()
