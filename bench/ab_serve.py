"""Side-by-side saturated throughput of two (or more) checkouts of the service (not a test).

    python bench/ab_serve.py --case miss --store /tmp/full-store --rounds 5 --duration 5 \\
        /tmp/before /work/main

Each positional argument is a source tree (e.g. a ``git worktree add /tmp/before <commit>``);
one uvicorn per tree serves the same store (or, with ``--store`` once per tree, its own:
bundles written by another code version may not load) with ``bench/serve.py``'s settings,
and the trees take turns, round by round, under the same closed-loop load
(``--concurrency`` clients, ``--case`` hit | miss | search as in ``bench/serve.py``).
Prints each tree's median req/s and every round: machine drift hits all of them alike, so
the ratio is the meaningful figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

import serve

# The project is pip-installed in editable mode, and the editable finder resolves app,
# model_store and indexer to the installed checkout ahead of sys.path: a tree's own code is
# only imported once that finder is gone. The child says which file it serves from.
LAUNCH = """
import sys
tree, port = sys.argv[1], int(sys.argv[2])
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, tree)
import app.main, uvicorn
print(f"serving {tree} from {app.main.__file__}", file=sys.stderr, flush=True)
uvicorn.run("app.main:app_from_env", factory=True, host="127.0.0.1", port=port,
            log_level="warning", access_log=False)
"""


class TreeServer(serve.Server):
    """``serve.Server`` (same uvicorn settings) running the code of ``tree``."""

    def __init__(self, tree: Path, env: dict[str, str]) -> None:
        self.port = serve.free_port()
        cmd = [sys.executable, "-c", LAUNCH, str(tree.resolve()), str(self.port)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=tree)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("trees", nargs="+", type=Path, help="source trees to compare")
    p.add_argument(
        "--store",
        type=Path,
        action="append",
        required=True,
        help="the store to serve; repeat it to give each tree its own (bundle formats differ)",
    )
    p.add_argument(
        "--data", type=Path, default=Path("/tmp/ml"), help="the dataset the store was trained on"
    )
    p.add_argument("--case", choices=("hit", "miss", "search"), default="miss")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    stores = a.store if len(a.store) == len(a.trees) else a.store[:1] * len(a.trees)
    env = {"FUSIONREC_RATE_LIMIT_RPS": "0", "FUSIONREC_DEVICE": "cpu"}
    servers = [
        TreeServer(tree, {**env, "FUSIONREC_STORE": str(store)})
        for tree, store in zip(a.trees, stores, strict=True)
    ]
    try:
        for srv in servers:
            srv.wait()
        body = serve.bodies(stores[0], a.data)
        path = "/v1/search" if a.case == "search" else "/v1/recommend"
        rps: list[list[float]] = [[] for _ in servers]

        async def run() -> None:
            for srv in servers:  # warm the hit users' cached vectors and the code paths
                conn = serve.Conn(srv.port)
                for i in range(200):
                    await conn.post("/v1/recommend", body["hit"](i))
                await serve.saturate(srv.port, path, body[a.case], a.concurrency, 2.0)
            for _ in range(a.rounds):
                for n, srv in enumerate(servers):
                    out = await serve.saturate(
                        srv.port, path, body[a.case], a.concurrency, a.duration
                    )
                    rps[n].append(out["rps"])

        asyncio.run(run())
    finally:
        for srv in servers:
            srv.stop()
    for tree, runs in zip(a.trees, rps, strict=True):
        print(
            f"{tree!s:40s} median {statistics.median(runs):7.0f} req/s  "
            f"rounds {[round(x) for x in runs]}"
        )


if __name__ == "__main__":
    main()
