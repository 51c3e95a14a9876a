"""Headless locust run of the fusionrec mix against a locally started server.

    python loadtest/run.py --store store --data data/movielens-100k [--duration 60] [--users 20]

Starts ``fusionrec serve`` on a free port (rate limit off, since every simulated shopper
comes from 127.0.0.1), waits for /readyz, runs ``locust --headless`` with
``loadtest/locustfile.py`` for a fixed duration and writes under ``--out`` (``reports/``):

* ``loadtest_stats.csv``, ``loadtest_stats_history.csv``, ``loadtest_failures.csv``,
  ``loadtest_exceptions.csv`` (locust's CSVs), ``loadtest.html`` (locust's report);
* ``loadtest_raw.csv`` — one line per request; ``loadtest_timeline.csv`` — per-second
  p50/p95/p99 latency and throughput computed from it; ``loadtest.png`` — their plot;
* ``loadtest_summary.json`` — the headline figures.

``--host URL`` targets a server that is already running instead (e.g. the compose LB).
If the store has no bundle, MovieLens-100k is fetched, trained (5 epochs) and indexed.
The helpers here are shared with ``bench/soak.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv's), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_bundle(store: Path, data: Path) -> None:
    """Fetch MovieLens-100k, train and index into ``store`` unless it has a CURRENT bundle."""
    if not (data / "interactions.csv").exists():
        subprocess.run(
            [_bin("fusionrec"), "data", "movielens-100k", "--out", str(data)], check=True
        )
    if (store / "CURRENT").exists():
        return
    subprocess.run(
        [_bin("fusionrec"), "train", "--data", str(data), "--store", str(store), "--epochs", "5"],
        check=True,
    )
    subprocess.run([_bin("fusionrec"), "index", "--store", str(store)], check=True)


def wait_ready(
    url: str,
    timeout_s: float = 180,
    proc: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    body: dict[str, Any] = json.loads(r.read())
                    return body
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s")


class LocalServer:
    """``fusionrec serve`` in a subprocess on a free port."""

    def __init__(
        self,
        store: Path,
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        workers: int = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "FUSIONREC_RATE_LIMIT_RPS": "0", **(env or {})}
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                _bin("fusionrec"),
                "serve",
                "--store",
                str(store),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> LocalServer:
        try:
            self.ready = wait_ready(self.url, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its children (uvicorn workers), from /proc."""

    def one(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    total = one(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(one(int(c)) for c in children)


def run_locust(
    host: str,
    *,
    data: Path,
    users: int,
    spawn_rate: float,
    duration_s: int,
    prefix: Path,
    raw: Path,
    user_rps: float | None = None,
) -> int:
    """Headless locust; returns its exit code (1 when any request failed)."""
    env = {**os.environ, "FUSIONREC_LOADTEST_DATA": str(data), "FUSIONREC_LOADTEST_RAW": str(raw)}
    if user_rps:
        env["FUSIONREC_LOADTEST_USER_RPS"] = str(user_rps)
    raw.unlink(missing_ok=True)
    cmd = [
        _bin("locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{duration_s}s",
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "10",
    ]
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


@dataclass
class Request:
    t: float
    name: str
    ms: float
    ok: bool
    status: int


def read_raw(raw: Path) -> list[Request]:
    out: list[Request] = []
    for line in raw.read_text().splitlines():
        t, name, ms, ok, status = line.split(",")
        out.append(Request(float(t), name, float(ms), ok == "1", int(status)))
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def windows(reqs: list[Request], width_s: float) -> list[dict[str, float]]:
    """Per-window (by completion time) count, errors, req/s and p50/p95/p99 in ms.

    A last window less than half full is left out (its requests still count in ``summary``).
    """
    if not reqs:
        return []
    t0 = min(r.t for r in reqs)
    buckets: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        buckets[int((r.t - t0) // width_s)].append(r)
    last = max(buckets)
    if last > 0 and (max(r.t for r in reqs) - t0) / width_s - last < 0.5:
        last -= 1  # a trailing sliver of a window would read as a throughput drop
    rows = []
    for w in range(last + 1):
        rs = buckets.get(w, [])
        ms = [r.ms for r in rs]
        rows.append(
            {
                "t_s": w * width_s,
                "requests": len(rs),
                "errors": sum(not r.ok for r in rs),
                "rps": len(rs) / width_s,
                "p50_ms": percentile(ms, 50),
                "p95_ms": percentile(ms, 95),
                "p99_ms": percentile(ms, 99),
            }
        )
    return rows


def summary(reqs: list[Request]) -> dict[str, Any]:
    span = (max(r.t for r in reqs) - min(r.t for r in reqs)) if reqs else 0.0
    per_name: dict[str, Any] = {}
    for name in sorted({r.name for r in reqs}):
        ms = [r.ms for r in reqs if r.name == name]
        per_name[name] = {
            "requests": len(ms),
            "errors": sum(not r.ok for r in reqs if r.name == name),
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
        }
    ms = [r.ms for r in reqs]
    return {
        "requests": len(reqs),
        "errors": sum(not r.ok for r in reqs),
        "statuses": {
            str(s): sum(r.status == s for r in reqs) for s in sorted({r.status for r in reqs})
        },
        "rps": len(reqs) / span if span else 0.0,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "by_endpoint": per_name,
    }


def write_timeline(rows: list[dict[str, float]], path: Path) -> None:
    cols = ["t_s", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"]
    lines = [",".join(cols)] + [",".join(f"{row[c]:g}" for c in cols) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax1.plot(t, [r[key] for r in rows], label=label)
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper right")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(title)
    ax2.plot(t, [r["rps"] for r in rows], color="tab:green", label="throughput")
    errs = [r["errors"] for r in rows]
    if any(errs):
        ax2.bar(t, errs, color="tab:red", label="errors")
    ax2.set_ylabel("requests/s")
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper right")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("store"))
    p.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    p.add_argument("--host", help="an already running server (default: start one)")
    p.add_argument("--duration", type=int, default=60, help="seconds")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--user-rps", type=float, help="constant rate per user (default: think time)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--name", default="loadtest", help="file name prefix under --out")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    prefix, raw = args.out / args.name, args.out / f"{args.name}_raw.csv"
    common = {
        "data": args.data,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "prefix": prefix,
        "raw": raw,
        "user_rps": args.user_rps,
    }
    if args.host:
        wait_ready(args.host.rstrip("/"))
        rc = run_locust(args.host.rstrip("/"), **common)
    else:
        ensure_bundle(args.store, args.data)
        with LocalServer(args.store, log=args.out / f"{args.name}_server.log") as srv:
            rc = run_locust(srv.url, **common)
    reqs = read_raw(raw)
    rows = windows(reqs, 1.0)
    write_timeline(rows, args.out / f"{args.name}_timeline.csv")
    plot(
        rows, args.out / f"{args.name}.png", f"fusionrec mix: {args.users} users, {args.duration} s"
    )
    result = {
        "users": args.users,
        "duration_s": args.duration,
        "locust_exit": rc,
        **summary(reqs),
        "png": str(args.out / f"{args.name}.png"),
    }
    (args.out / f"{args.name}_summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "by_endpoint"}, indent=2))
    for name, s in result["by_endpoint"].items():
        print(
            f"{name:24s} n={s['requests']:6d} err={s['errors']:4d} "
            f"p50={s['p50_ms']:.1f} p95={s['p95_ms']:.1f} p99={s['p99_ms']:.1f} ms"
        )
    return 0 if result["errors"] == 0 and reqs else 1


if __name__ == "__main__":
    sys.exit(main())
