"""The checks on the system's own state at the end: the event log against the events
answered 200, the catalog on both replicas and in the database, the forgotten shoppers, the
replicas' CURRENT and catalog sequence, the retrain job, attribution, the log's health."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.rehearse.admin import shows
from bench.rehearse.checks import Ctx, Result, hostile_cases, verdict
from bench.rehearse.client import Reply
from bench.rehearse.state import Final, user_hash


@dataclass
class StateCtx:
    ctx: Ctx
    final: Final
    key: str  # the user-id key
    items_seen: dict[str, dict[str, Reply]]  # replica -> item -> GET /v1/items/{id}
    bundle_users: dict[str, set[str]]  # version -> user ids in its histories
    version_time: dict[str, float]  # version -> when it appeared (seconds after the start)
    retrained: set[str] = field(default_factory=set)  # retrained versions that became CURRENT
    lineages: dict[str, str] = field(default_factory=dict)  # version -> initial, retrained
    # retrained version -> when its round read the tombstones and the log (s after the start)
    snapshots: dict[str, float] = field(default_factory=dict)

    def h(self, user: str) -> str:
        return user_hash(user, self.key)

    def lineage(self, version: str) -> str:
        return self.lineages.get(version, "other")


def events_exactly_once(s: StateCtx) -> Result:
    if s.final.log_error:
        return Result("events_exactly_once", "FAIL", s.final.log_error)
    gone = set(s.ctx.ledger.forgotten)
    want: Counter[tuple[str, str, str]] = Counter()
    unknown: Counter[tuple[str, str, str]] = Counter()
    refused: set[tuple[str, str, str]] = set()
    for e in s.ctx.ledger.events:
        if e.user_id in gone:
            continue
        key = (s.h(e.user_id), e.item_id, e.type)
        if e.outcome == "ok":
            want[key] += 1
        elif e.outcome == "unknown":
            unknown[key] += 1
        else:
            refused.add(key)
    missing = sum(max(0, n - s.final.log_counts.get(k, 0)) for k, n in want.items())
    extra = sum(
        max(0, s.final.log_counts.get(k, 0) - want[k] - unknown[k])
        for k in set(want) | set(unknown) | refused
    )
    problems = []
    if missing:
        problems.append(f"{missing} of {sum(want.values())} events answered 200 are not in the log")
    if extra:
        problems.append(
            f"{extra} rows more than the events answered (duplicates or refused events stored)"
        )
    if not want:
        problems.append("no event was answered 200")
    figures = {"answered_200": sum(want.values()), "unknown_outcome": sum(unknown.values()),
               "missing": missing, "extra": extra}  # fmt: skip
    return verdict("events_exactly_once", problems, figures)


def events_import(s: StateCtx) -> Result:
    setup = s.ctx.ledger.setup.get("import", {})
    if not setup.get("ok"):
        return Result(
            "events_import",
            "FAIL",
            f"`fusionrec events import` of the history: {setup.get('message', 'not run')}",
        )
    rows = setup.get("logged")
    if rows is None:
        rows = s.ctx.ledger.log_rows[0][1] if s.ctx.ledger.log_rows else 0
    expected = int(setup.get("rows", 0))
    problems = [] if rows >= expected else [f"the log held {rows} rows after importing {expected}"]
    return verdict("events_import", problems, {"rows": rows, "seconds": setup.get("seconds")})


def events_batch(s: StateCtx) -> Result:
    why = s.ctx.ledger.not_available.get("events_batch")
    if why:
        return Result("events_batch", "SKIP-NOT-AVAILABLE", why)
    batch = [e for e in s.ctx.ledger.events if e.via == "batch"]
    ok = sum(e.outcome == "ok" for e in batch)
    problems = [] if ok else [f"no batched event was accepted ({len(batch)} sent)"]
    unreadable = [n for n in s.ctx.ledger.notes if "unreadable events:batch" in n]
    if unreadable:
        problems.append(f"{len(unreadable)} batch answers without per-event results")
    return verdict("events_batch", problems, {"sent": len(batch), "accepted": ok})


def hostile_refused(s: StateCtx) -> Result:
    problems, by_case = hostile_cases(s.ctx)
    logged = [u for u in s.final.log_users if u in {s.h(f"rh-hostile-{i}") for i in (1, 9)}]
    if logged:
        problems.append("events of the hostile client reached the log")
    return verdict("hostile_refused", problems, {k: dict(v) for k, v in by_case.items()})


def _expected_items(s: StateCtx) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """Each item's state after its last write answered 200 (None: deleted); items whose
    last write had no answer are left out."""
    expect: dict[str, dict[str, Any] | None] = {}
    unsure: list[str] = []
    for w in s.ctx.ledger.writes:
        if w.outcome == "ok":
            prev = expect.get(w.item_id) or {}
            expect[w.item_id] = None if w.expect is None else {**prev, **w.expect}
            if w.item_id in unsure:
                unsure.remove(w.item_id)
        elif w.outcome == "unknown":
            unsure.append(w.item_id)
    for item in unsure:
        expect.pop(item, None)
    return expect, unsure


def catalog_writes_visible(s: StateCtx) -> Result:
    expect, unsure = _expected_items(s)
    problems = []
    for replica, seen in s.items_seen.items():
        wrong = [i for i, e in expect.items() if not shows(seen.get(i, Reply(0, 0)), e)]
        if wrong:
            problems.append(
                f"replica {replica}: {len(wrong)} of {len(expect)} items not as written "
                f"({', '.join(wrong[:4])})"
            )
    if not expect:
        problems.append("no catalog write was answered 200")
    return verdict(
        "catalog_writes_visible", problems, {"items": len(expect), "unsure": len(unsure)}
    )


def catalog_in_database(s: StateCtx) -> Result:
    if s.final.catalog is None:
        return Result(
            "catalog_in_database",
            "FAIL",
            "the database has no fusionrec_catalog_items table (issue 28: the catalog as rows)",
        )
    expect, _ = _expected_items(s)
    wrong = []
    for item, e in expect.items():
        row = s.final.catalog.get(item)
        if row is None:
            wrong.append(f"{item} (no row)")
        elif e is None and not row.get("deleted"):
            wrong.append(f"{item} (deleted, row not)")
        elif e is not None and row.get("deleted"):
            wrong.append(f"{item} (row deleted)")
        elif e is not None and e.get("available", True) != bool(row.get("available", True)):
            wrong.append(f"{item} (available)")
    problems = (
        [f"{len(wrong)} of {len(expect)} rows differ: {', '.join(wrong[:5])}"] if wrong else []
    )
    return verdict("catalog_in_database", problems, {"items": len(expect)})
