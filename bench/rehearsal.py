"""The rehearsal: a day in a storefront's life on this machine (issue 33).

    python bench/rehearsal.py [--duration 600] [--rate 20] [--steps 5] [--store S] [--data D]
    make rehearsal [DURATION=600]

Starts the deployed shape as real processes — two API replicas (``deploy/api-serve.sh``)
on one store behind nginx (the project's ``deploy/nginx.conf`` with static upstreams),
Redis and PostgreSQL configured as in docker-compose.yml, the retrain job on a short
schedule — imports the data's history into the event log, then drives shoppers, an admin
client and a hostile client through the LB while faults happen on a schedule (kill -9 of a
replica, Redis restarted, PostgreSQL stopped, a corrupt bundle published, a retrain
publishing a new CURRENT). At the end it reads the system's own state (the database,
Redis, the store, /readyz, /metrics) and prints one ``PASS name`` / ``FAIL name: reason``
line per check, then ``rehearsal: N checks passed, M failed``; exit status 1 when any
failed. Report: ``reports/rehearsal.html`` (plots) and ``reports/rehearsal.json``.

The parts are in ``bench/rehearse/`` (one module per role, see its ``__init__``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rehearse.run import main

if __name__ == "__main__":
    raise SystemExit(main())
