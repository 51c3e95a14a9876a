"""What a rehearsal runs: durations, rates, the fault schedule and the latency budgets.

The defaults fit a 2-core machine that also runs every server of the stack: ten minutes,
20 shopper reads/s plus 5 shopper steps/s (a recommend and its events). A fault is placed
at a fraction of the duration so that a short run (the test suite's) has one of each kind.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# p99 budgets in ms outside fault windows, per endpoint label (``client.endpoint_label``)
DEFAULT_BUDGETS_MS: dict[str, float] = {
    "recommend": 300.0,
    "search": 500.0,
    "similar": 300.0,
    "item": 200.0,
    "event": 300.0,
    "events_batch": 800.0,
    "admin_write": 1500.0,
    "forget": 800.0,
}
# faults at these fractions of the duration (the retrain job starts at its own fraction)
FAULT_NAMES = ("kill_replica", "restart_redis", "stop_postgres", "corrupt_bundle")
DEFAULT_FAULT_AT = {
    "kill_replica": 0.12,
    "restart_redis": 0.27,
    "stop_postgres": 0.42,
    "corrupt_bundle": 0.62,
}


@dataclass
class Plan:
    duration_s: float = 600.0
    read_rate: float = 20.0  # shopper reads/s (recommend, search, similar, item, filters)
    step_rate: float = 5.0  # shopper steps/s: a recommend, then a click/purchase or a view
    admin_rate: float = 0.5  # catalog writes and erasures per second
    hostile_rate: float = 1.0  # hostile requests per second
    batch_share: float = 0.3  # share of the events sent through POST /v1/events:batch
    cold_share: float = 0.3  # share of shopper sessions that are new (cold) shoppers
    replay_tail: int = 5  # held-out interactions per MovieLens user, replayed
    faults: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULT_AT))
    pg_stop_s: float = 20.0
    retrain_at: float = 0.30  # fraction of the duration when the retrain job starts
    retrain_every_s: float = 0.0  # 0 = a quarter of the duration, at least 60 s
    retrain_epochs: int = 2
    retrain_margin: float = 0.005  # the gate's margin (`fusionrec retrain --margin`)
    train_epochs: int = 3  # for a store the rehearsal trains itself
    budgets_ms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGETS_MS))
    fault_grace_s: float = 5.0  # after a fault's recovery, still counted as its window
    propagation_budget_s: float = 2.0  # a catalog change on both replicas within this
    data: Path = ROOT / "data" / "movielens-100k"
    store: Path | None = None  # None = a store trained by the rehearsal (cached)
    out: Path = ROOT / "reports"
    seed: int = 0

    def every_s(self) -> float:
        return self.retrain_every_s or max(60.0, self.duration_s / 4)

    def fault_times(self) -> list[tuple[float, str]]:
        """(seconds after the start, fault) in order."""
        times = [(frac * self.duration_s, name) for name, frac in self.faults.items()]
        return sorted(times)


def _pairs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/rehearsal.py",
        description="Run the deployed shape (2 replicas behind nginx, Redis, PostgreSQL, the "
        "retrain job) under shopper traffic, catalog edits and faults; print one PASS/FAIL "
        "line per check and `rehearsal: N checks passed, M failed`.",
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--rate", type=float, default=20.0, help="shopper reads per second")
    p.add_argument("--steps", type=float, default=5.0, help="shopper steps (with events) per s")
    p.add_argument("--admin-rate", type=float, default=0.5)
    p.add_argument("--hostile-rate", type=float, default=1.0)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "movielens-100k")
    p.add_argument(
        "--store", type=Path, default=None, help="a trained, indexed store (copied, never "
        "changed); default: one the rehearsal trains on the data's history (cached)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "reports")
    p.add_argument(
        "--faults", default=None, help="name=fraction,… of " + ", ".join(FAULT_NAMES) + " "
        "(a fraction of the duration; 'none' for no faults)",
    )  # fmt: skip
    p.add_argument("--retrain-at", type=float, default=0.30, help="fraction; <0 = no retrain")
    p.add_argument("--retrain-every", type=float, default=0.0, help="seconds (0 = auto)")
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument(
        "--retrain-margin", type=float, default=0.005, help="the gate's NDCG@10 margin "
        "(`fusionrec retrain --margin`; a short run's few holdout shoppers need a wider one)",
    )  # fmt: skip
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--pg-stop", type=float, default=20.0, help="seconds PostgreSQL is down")
    p.add_argument("--budget", default="", help="endpoint=p99 ms,… overriding the defaults")
    p.add_argument("--seed", type=int, default=0)
    return p


def from_args(argv: list[str] | None = None) -> Plan:
    a = parser().parse_args(argv)
    faults = dict(DEFAULT_FAULT_AT)
    if a.faults == "none":
        faults = {}
    elif a.faults:
        faults = _pairs(a.faults)
        unknown = set(faults) - set(FAULT_NAMES)
        if unknown:
            parser().error(f"unknown fault(s) {sorted(unknown)}; known: {FAULT_NAMES}")
    budgets = {**DEFAULT_BUDGETS_MS, **_pairs(a.budget)}
    return Plan(
        duration_s=a.duration,
        read_rate=a.rate,
        step_rate=a.steps,
        admin_rate=a.admin_rate,
        hostile_rate=a.hostile_rate,
        faults=faults,
        pg_stop_s=a.pg_stop,
        retrain_at=a.retrain_at,
        retrain_every_s=a.retrain_every,
        retrain_epochs=a.retrain_epochs,
        retrain_margin=a.retrain_margin,
        train_epochs=a.train_epochs,
        budgets_ms=budgets,
        # absolute: nginx and the replicas run from other directories (`make rehearsal`
        # passes `--out reports`)
        data=a.data.resolve(),
        store=a.store.resolve() if a.store is not None else None,
        out=a.out.resolve(),
        seed=a.seed,
    )
