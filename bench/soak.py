"""Soak benchmark (not a test): the locust mix at a steady rate for N minutes.

    python bench/soak.py --store store --data data/movielens-100k [--minutes 10] [--rate 50]

Starts ``fusionrec serve`` (1 worker, rate limit off) on a free port and runs
``loadtest/locustfile.py`` headless with ``--users`` shoppers at a constant rate each
(``--rate`` / ``--users`` requests/s per shopper, so ``--rate`` requests/s in total while
the server keeps up). Reports the error count, latency percentiles per minute and the
server's resident memory (RSS, sampled every 5 s): after start-up (cold), after the warm-up
(``--warmup`` seconds of load: caches, allocator pools and lazily built state settle) and at
the end. The growth target is end / warm < 1.10.

Writes ``reports/soak_summary.json``, ``reports/soak_minutes.csv``, ``reports/soak_rss.csv``
and ``reports/soak.png`` (plus locust's CSV/HTML with the ``soak`` prefix) and prints a
markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.run import (  # noqa: E402
    LOCUSTFILE,
    LocalServer,
    _bin,
    ensure_bundle,
    plot,
    read_raw,
    rss_bytes,
    summary,
    windows,
    write_timeline,
)

MIB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("store"))
    p.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=50.0, help="total requests/s")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before the 'warm' RSS")
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    ensure_bundle(args.store, args.data)
    prefix, raw = args.out / "soak", args.out / "soak_raw.csv"
    raw.unlink(missing_ok=True)
    duration = int(args.minutes * 60)
    started = dt.datetime.now(dt.UTC)
    with LocalServer(args.store, log=args.out / "soak_server.log") as srv:
        pid = srv.proc.pid
        rss: list[tuple[float, int]] = [(0.0, rss_bytes(pid))]
        env = {
            **os.environ,
            "FUSIONREC_LOADTEST_DATA": str(args.data),
            "FUSIONREC_LOADTEST_RAW": str(raw),
            "FUSIONREC_LOADTEST_USER_RPS": str(args.rate / args.users),
        }
        cmd = [
            _bin("locust"),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            srv.url,
            "-u",
            str(args.users),
            "-r",
            str(args.users),
            "-t",
            f"{duration}s",
            "--csv",
            str(prefix),
            "--html",
            f"{prefix}.html",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--stop-timeout",
            "10",
        ]
        t0 = time.monotonic()
        locust = subprocess.Popen(cmd, env=env, cwd=ROOT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5.0):
                rss.append((time.monotonic() - t0, rss_bytes(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = locust.wait()
        done.set()
        sampler.join()
        rss.append((time.monotonic() - t0, rss_bytes(pid)))
        alive = srv.proc.poll() is None

    reqs = read_raw(raw)
    minutes = windows(reqs, 60.0)
    write_timeline(minutes, args.out / "soak_minutes.csv")
    plot(
        windows(reqs, 5.0),
        args.out / "soak.png",
        f"soak: {args.rate:g} req/s target, {args.minutes:g} min",
    )
    (args.out / "soak_rss.csv").write_text(
        "t_s,rss_mib\n" + "".join(f"{t:.1f},{b / MIB:.1f}\n" for t, b in rss)
    )
    cold = rss[0][1]
    warm = next((b for t, b in rss if t >= args.warmup), rss[-1][1])
    end = rss[-1][1]
    result: dict[str, Any] = {
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/soak.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        "minutes": args.minutes,
        "target_rps": args.rate,
        "users": args.users,
        "locust_exit": rc,
        "server_alive_at_end": alive,
        **summary(reqs),
        "rss_mib": {
            "cold": cold / MIB,
            "warm": warm / MIB,
            "end": end / MIB,
            "growth_vs_warm": end / warm - 1 if warm else None,
            "growth_vs_cold": end / cold - 1 if cold else None,
        },
        "per_minute": minutes,
    }
    (args.out / "soak_summary.json").write_text(json.dumps(result, indent=2))

    print(f"soak {args.minutes:g} min at {args.rate:g} req/s target — {result['date_utc']}")
    print(
        f"requests {result['requests']}, errors {result['errors']}, "
        f"achieved {result['rps']:.1f} req/s, statuses {result['statuses']}"
    )
    r = result["rss_mib"]
    print(
        f"RSS cold {r['cold']:.1f} MiB, warm {r['warm']:.1f} MiB, end {r['end']:.1f} MiB, "
        f"growth vs warm {100 * (r['growth_vs_warm'] or 0):+.1f} %"
    )
    print("\n| minute | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, m in enumerate(minutes, 1):
        print(
            f"| {n} | {m['requests']:.0f} | {m['errors']:.0f} | {m['rps']:.1f} | "
            f"{m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {m['p99_ms']:.1f} |"
        )
    ok = result["errors"] == 0 and alive and (r["growth_vs_warm"] or 0) < 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
