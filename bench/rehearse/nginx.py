"""The rehearsal's LB: the project's nginx configuration with static upstreams.

``deploy/nginx.conf`` (the compose LB) is taken as it is, with three changes only: no
Docker resolver, the replicas' addresses instead of ``api:8000 resolve`` (whose options,
e.g. ``max_fails``, are kept), and a loopback port instead of 8080. Its server part is the
shared ``deploy/nginx/fusionrec-lb.conf``, included from the repository. The rehearsal
adds only what it needs to observe: which replica answered (``X-Upstream``) and its own
pid, log and temp paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.rehearse.plan import ROOT

COMPOSE_CONF = ROOT / "deploy" / "nginx.conf"
SHARED_CONF = ROOT / "deploy" / "nginx" / "fusionrec-lb.conf"
COMPOSE_INCLUDE = "/etc/nginx/fusionrec-lb.conf"
_SERVER = re.compile(r"^\s*server\s+api:8000\s+resolve\s*(?P<opts>[^;]*);", re.M)


def render_http(ports: list[int], listen: int) -> str:
    """The http{} part: deploy/nginx.conf with static upstreams on ``ports``."""
    text = COMPOSE_CONF.read_text()
    match = _SERVER.search(text)
    if match is None:
        raise RuntimeError(f"{COMPOSE_CONF}: no `server api:8000 resolve …;` line to rewrite")
    opts = match.group("opts").strip()
    servers = "\n".join(f"    server 127.0.0.1:{p} {opts};" for p in ports)
    text = text[: match.start()] + servers + text[match.end() :]
    text = re.sub(r"^\s*resolver\s[^;]*;", "", text, flags=re.M)
    if "listen 8080;" not in text or COMPOSE_INCLUDE not in text:
        raise RuntimeError(
            f"{COMPOSE_CONF}: expected `listen 8080;` and `include {COMPOSE_INCLUDE}`"
        )
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    return text.replace(COMPOSE_INCLUDE, str(SHARED_CONF))


def render(ports: list[int], listen: int, work: Path, temp: Path) -> str:
    temps = "\n".join(
        f"    {name}_temp_path {temp / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# rendered by bench/rehearse/nginx.py from {COMPOSE_CONF.relative_to(ROOT)}
daemon off;
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 2048; }}
http {{
    default_type application/octet-stream;
    log_format rehearsal '$msec $status $request_time $upstream_addr "$request"';
    access_log {work / "access.log"} rehearsal;
{temps}
    add_header X-Upstream $upstream_addr always;
{render_http(ports, listen)}
}}
"""


def binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise RuntimeError("nginx is not installed: `make install-system` installs it")
    return found


class Nginx:
    """nginx in the foreground with its own prefix, config, pid and logs."""

    def __init__(self, work: Path, ports: list[int], listen: int) -> None:
        self.work = work
        self.port = listen
        self.url = f"http://127.0.0.1:{listen}"
        work.mkdir(parents=True, exist_ok=True)
        # the worker process (user nobody when started as root) writes request bodies here
        self.temp = Path(tempfile.mkdtemp(prefix="fusionrec-nginx-"))
        os.chmod(self.temp, 0o1777)
        self.conf = work / "nginx.conf"
        self.conf.write_text(render(ports, listen, work, self.temp))
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        r = subprocess.run(
            [binary(), "-t", "-p", str(self.work), "-c", str(self.conf)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"nginx -t refused {self.conf}:\n{r.stderr}")

    def start(self) -> None:
        self.check()
        log = open(self.work / "stderr.log", "ab")  # noqa: SIM115 - the process's life
        self.proc = subprocess.Popen(
            [binary(), "-p", str(self.work), "-c", str(self.conf)], stdout=log, stderr=log
        )
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start; see {self.work}/error.log") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.temp, ignore_errors=True)
