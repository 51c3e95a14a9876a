"""The checks on what the clients were answered: server errors, refused valid requests,
latency budgets outside fault windows, the hostile cases, hidden items, propagation of
catalog changes, the corrupt bundle, recovery from each fault. Each returns a ``Result``;
none passes without evidence (an empty sample is a failure, not a pass)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bench.rehearse.hostile import Case
from bench.rehearse.ledger import Call, CatalogWrite, Ledger, Window
from bench.rehearse.plan import Plan

Status = Literal["PASS", "FAIL", "SKIP-NOT-AVAILABLE"]
TRAFFIC_ROLES = ("shopper", "admin")


@dataclass
class Result:
    name: str
    status: Status
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def line(self) -> str:
        return f"{self.status} {self.name}" + (f": {self.reason}" if self.reason else "")


def verdict(name: str, problems: list[str], figures: dict[str, Any] | None = None) -> Result:
    if problems:
        shown = "; ".join(problems[:6]) + (
            f"; … {len(problems) - 6} more" if len(problems) > 6 else ""
        )
        return Result(name, "FAIL", shown, figures or {})
    return Result(name, "PASS", "", figures or {})


@dataclass
class Ctx:
    plan: Plan
    ledger: Ledger
    horizon: float
    cases: list[Case]

    def fault_of(self, t: float) -> str | None:
        return self.ledger.in_fault(t, self.plan.fault_grace_s, self.horizon)


def _fmt(counter: Counter[str]) -> str:
    return ", ".join(f"{n}× {k}" for k, n in counter.most_common(5))


def no_server_errors(ctx: Ctx) -> Result:
    """Outside faults no 5xx and no unanswered request; inside, only 503 + Retry-After."""
    outside: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    accepted_in_fault = 0
    for c in ctx.ledger.calls:
        bad = c.status == 0 or c.status >= 500
        if not bad:
            continue
        fault = ctx.fault_of(c.t)
        label = f"{c.endpoint} {c.kind}"
        if fault is None:
            outside[label] += 1
        elif c.kind == "503_retry_after":
            accepted_in_fault += 1
        else:
            inside[f"{label} during {fault}"] += 1
    problems = []
    if outside:
        problems.append(f"outside fault windows: {_fmt(outside)}")
    if inside:
        problems.append(f"during faults, not a 503 with Retry-After: {_fmt(inside)}")
    figures = {
        "outside": dict(outside),
        "inside": dict(inside),
        "503_retry_after": accepted_in_fault,
    }
    if not ctx.ledger.calls:
        problems.append("no request was made")
    return verdict("no_server_errors", problems, figures)


def valid_requests_accepted(ctx: Ctx) -> Result:
    """Well-formed shopper and admin requests are not refused (429 from the LB aside)."""
    refused: Counter[str] = Counter()
    missing = set(ctx.ledger.not_available)  # reported by their own check
    for c in ctx.ledger.calls:
        if c.endpoint in missing:
            continue
        if c.role in TRAFFIC_ROLES and 400 <= c.status < 500 and c.case != "retry":
            refused[f"{c.endpoint}{'/' + c.case if c.case else ''} {c.status}"] += 1
    total = sum(1 for c in ctx.ledger.calls if c.role in TRAFFIC_ROLES)
    problems = [f"{sum(refused.values())} of {total} refused: {_fmt(refused)}"] if refused else []
    if total == 0:
        problems.append("no shopper or admin request was made")
    return verdict("valid_requests_accepted", problems, {"refused": dict(refused), "total": total})


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _busy(ctx: Ctx, after_s: float = 3.0) -> list[tuple[float, float]]:
    """When a catalog write or a heavy hostile request was in flight (or just done): the
    p99 away from them tells what they cost (a diagnostic beside the check)."""
    spans = [(w.t_sent, w.t_ack + after_s) for w in ctx.ledger.writes]
    spans += [
        (c.t, c.t + c.ms / 1000 + after_s)
        for c in ctx.ledger.calls
        if c.role == "hostile" and c.case.startswith(("huge_", "oversized"))
    ]
    return sorted(spans)


def _inside(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


def _quiet(values: list[float]) -> str:
    if len(values) < 20:
        return ""
    return f"; p99 {_p(values, 99):.0f} ms away from catalog writes and huge filters"


def latency(ctx: Ctx) -> list[Result]:
    """One check per endpoint with a budget: p99 of answered requests outside faults."""
    out_ms: dict[str, list[float]] = defaultdict(list)
    in_ms: dict[str, list[float]] = defaultdict(list)
    quiet_ms: dict[str, list[float]] = defaultdict(list)
    busy = _busy(ctx)
    for c in ctx.ledger.calls:
        if c.role in TRAFFIC_ROLES and 200 <= c.status < 300:
            (in_ms if ctx.fault_of(c.t) else out_ms)[c.endpoint].append(c.ms)
            if not ctx.fault_of(c.t) and not _inside(c.t, busy):
                quiet_ms[c.endpoint].append(c.ms)
    results = []
    for endpoint, budget in ctx.plan.budgets_ms.items():
        got = out_ms.get(endpoint, [])
        inside = in_ms.get(endpoint, [])
        if endpoint in ctx.ledger.not_available:
            why = ctx.ledger.not_available[endpoint]
            results.append(Result(f"p99_{endpoint}", "SKIP-NOT-AVAILABLE", why))
            continue
        scope = "outside fault windows"
        if not got and inside:  # a rare endpoint whose calls all fell in windows: judge them all
            got, scope = inside, "all inside fault windows"
        figures = {
            "budget_ms": budget, "n": len(got), "p50_ms": _p(got, 50), "p99_ms": _p(got, 99),
            "n_in_faults": len(inside), "p50_in_faults_ms": _p(inside, 50),
            "p99_in_faults_ms": _p(inside, 99),
            "p99_away_from_catalog_writes_and_heavy_filters_ms": _p(quiet_ms[endpoint], 99),
        }  # fmt: skip
        if not got:
            problems = ["no answered request"]
        elif figures["p99_ms"] > budget:
            problems = [
                f"p99 {figures['p99_ms']:.0f} ms > budget {budget:.0f} ms "
                f"(n={len(got)} {scope}, p50 {figures['p50_ms']:.0f} ms"
                f"{_quiet(quiet_ms[endpoint])})"
            ]
        else:
            problems = []
        r = verdict(f"p99_{endpoint}", problems, figures)
        if r.passed:
            r.reason = f"p99 {figures['p99_ms']:.0f} ms <= {budget:.0f} ms (n={len(got)} {scope})"
        results.append(r)
    return results


def hostile_cases(ctx: Ctx) -> tuple[list[str], dict[str, Counter[int]]]:
    by_case: dict[str, Counter[int]] = defaultdict(Counter)
    for c in ctx.ledger.calls:
        # during a fault a 503 with Retry-After (a replica starting, say) is the documented
        # answer to any request, a hostile one too: it is not taken for acceptance
        excused = c.kind == "503_retry_after" and ctx.fault_of(c.t) is not None
        if c.role == "hostile" and not excused:
            by_case[c.case][c.status] += 1
    problems = []
    for case in ctx.cases:
        got = by_case.get(case.name)
        if not got:
            problems.append(f"{case.name} never sent")
            continue
        wrong = {s: n for s, n in got.items() if s not in case.ok}
        if wrong:
            problems.append(
                f"{case.name} answered {', '.join(f'{s}×{n}' for s, n in wrong.items())}"
            )
    return problems, by_case


def hidden_never_returned(ctx: Ctx) -> Result:
    seen = ctx.ledger.hidden_shown
    hid = len(ctx.ledger.hidden_since)
    problems = [f"{len(seen)} answers returned hidden or deleted items: " + ", ".join(
        f"{item} by {ep} at {t:.0f}s" for t, ep, item in seen[:4])] if seen else []  # fmt: skip
    if hid == 0:
        problems.append("no item was hidden or deleted (nothing to check)")
    return verdict(
        "hidden_never_returned", problems, {"hidden_or_deleted": hid, "violations": len(seen)}
    )


def catalog_propagation(ctx: Ctx) -> Result:
    budget = ctx.plan.propagation_budget_s
    ok = [w for w in ctx.ledger.writes if w.outcome == "ok"]
    times = [w.propagation_s for w in ok if w.propagation_s is not None]
    down = [w for w in ctx.ledger.windows if w.name == "kill_replica"]

    def during_outage(w: CatalogWrite) -> bool:
        return any(d.start <= w.t_ack <= (d.end or ctx.horizon) for d in down)

    # a write made while the other replica is down reaches it when it is back: judged at the
    # end by catalog_writes_visible, not by the live replicas' budget or the 10 s watch
    never = [f"{w.op} {w.item_id}" for w in ok if w.propagation_s is None and not during_outage(w)]
    slow = [
        f"{w.op} {w.item_id} {w.propagation_s:.1f}s"
        for w in ok
        if w.propagation_s and w.propagation_s > budget and not during_outage(w)
    ]
    problems = []
    if never:
        problems.append(
            f"{len(never)} writes never seen on the other replica (10 s): {', '.join(never[:4])}"
        )
    if slow:
        problems.append(f"{len(slow)} writes over {budget:.0f} s: {', '.join(slow[:4])}")
    if not ok:
        problems.append("no catalog write was answered 200")
    figures = {
        "writes": len(ok),
        "p50_s": _p(times, 50),
        "p99_s": _p(times, 99),
        "max_s": max(times, default=float("nan")),
    }
    return verdict("catalog_propagation", problems, figures)


def _window(ledger: Ledger, name: str) -> Window | None:
    return next((w for w in ledger.windows if w.name == name), None)


def corrupt_bundle_refused(ctx: Ctx) -> Result:
    w = _window(ctx.ledger, "corrupt_bundle")
    if w is None:
        return Result(
            "corrupt_bundle_refused",
            "FAIL",
            "no corrupt bundle was published (fault not scheduled or failed)",
        )
    bad = w.detail.get("corrupt", "?")
    end = w.end if w.end is not None else ctx.horizon
    problems = []
    served = [s for s in ctx.ledger.shown if s.version == bad]
    if served:
        problems.append(f"{len(served)} answers came from the corrupt bundle {bad}")
    loaded = {s.replica for s in ctx.ledger.samples if s.version == bad}
    if loaded:
        problems.append(f"replica(s) {sorted(loaded)} loaded it")
    down = {s.replica for s in ctx.ledger.samples if w.start <= s.t <= end and not s.ready}
    if down:
        problems.append(f"replica(s) {sorted(down)} not ready while it was CURRENT")
    reloads = w.detail.get("reloads", {})
    wrong = {r: s for r, s in reloads.items() if s != 409}
    if wrong or not reloads:
        problems.append(f"POST /admin/reload answered {wrong or 'nothing'} (409 expected)")
    return verdict("corrupt_bundle_refused", problems, {"corrupt": bad, "reloads": reloads})


def faults_recovered(ctx: Ctx) -> Result:
    problems = list(ctx.ledger.setup.get("fault_errors", []))
    figures: dict[str, Any] = {}
    for w in ctx.ledger.windows:
        if w.name == "retrain":
            continue
        if w.end is None:
            problems.append(
                f"{w.name} at {w.start:.0f}s: {'; '.join(w.notes) or 'never recovered'}"
            )
        else:
            figures[f"{w.name}@{w.start:.0f}s"] = round(w.end - w.start, 1)
    wanted = set(ctx.plan.faults)
    missing = wanted - {w.name for w in ctx.ledger.windows}
    if missing:
        problems.append(f"scheduled but not run: {sorted(missing)}")
    return verdict("faults_recovered", problems, {"window_s": figures})


def traffic_checks(ctx: Ctx) -> list[Result]:
    return [
        no_server_errors(ctx),
        valid_requests_accepted(ctx),
        *latency(ctx),
        hidden_never_returned(ctx),
        catalog_propagation(ctx),
        corrupt_bundle_refused(ctx),
        faults_recovered(ctx),
    ]


def calls_by_second(calls: list[Call]) -> dict[int, int]:
    out: Counter[int] = Counter(int(c.t) for c in calls)
    return dict(out)
