"""The checks on the loop and the shared state: forgotten shoppers, the replicas' CURRENT
and catalog sequence, the retrain job's new CURRENT, attribution per model version, the
event log's health in /readyz and /metrics."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from bench.rehearse.checks import Result, verdict
from bench.rehearse.checks_state import StateCtx

SEQ_KEYS = ("catalog_seq", "catalog_sequence", "applied_seq")


def forgotten_gone(s: StateCtx) -> Result:
    users = s.ctx.ledger.forgotten
    problems = []
    if not users:
        return Result(
            "forgotten_gone",
            "FAIL",
            "no shopper was forgotten (DELETE /v1/users never answered 204)",
        )
    if s.final.redis_error:
        problems.append(f"Redis unreadable: {s.final.redis_error}")
    in_log = [u for u in users if s.h(u) in s.final.log_users]
    if in_log:
        problems.append(
            f"{len(in_log)} of {len(users)} still have events in the log ({', '.join(in_log[:3])})"
        )
    in_redis = {u: k for u, k in s.final.redis_left.items() if k}
    if in_redis:
        problems.append(
            f"{len(in_redis)} still have Redis keys ({next(iter(in_redis.values()))[0]})"
        )
    untomb = [u for u, t in s.final.tombstoned.items() if not t]
    if untomb:
        problems.append(f"{len(untomb)} have no tombstone in Redis")
    return verdict("forgotten_gone", problems, {"forgotten": len(users)})


def forgotten_not_in_next_bundle(s: StateCtx) -> Result:
    """Each bundle the retrain job published carries no shopper forgotten (DELETE answered
    204) before its round read the tombstones and the log (its manifest's
    ``gate.snapshot_at``); one forgotten later may still be in it. A run without one such
    pair has verified nothing and fails ("not exercised")."""
    name, users = "forgotten_not_in_next_bundle", s.ctx.ledger.forgotten
    if not users:
        return Result(name, "FAIL", "no shopper was forgotten")
    problems, figures, pairs = [], {}, 0
    for v in sorted(s.retrained):
        at = s.snapshots.get(v)
        if at is None:
            problems.append(f"{v} records no data snapshot (gate.snapshot_at)")
            continue
        before = [u for u in users if users[u] < at]
        have = s.bundle_users.get(v, set())
        kept = [u for u in before if u in have or s.h(u) in have]
        pairs += len(before)
        figures[v] = {"snapshot_s": round(at, 1), "forgotten_before": len(before),
                      "kept": len(kept)}  # fmt: skip
        if kept:
            problems.append(
                f"{v} keeps {len(kept)} shopper(s) forgotten before its data snapshot at "
                f"{at:.0f}s ({', '.join(sorted(kept)[:3])})"
            )
    if not pairs:
        first = min(users.values())
        problems.append(
            f"not exercised: no shopper was forgotten before a published retrain read its "
            f"data (first erasure at {first:.0f}s; published: {sorted(s.retrained) or 'none'})"
        )
    return verdict(name, problems, figures)


def same_current(s: StateCtx) -> Result:
    ready = s.final.ready
    versions = {r: b.get("model_version") for r, b in ready.items()}
    problems = []
    not_ready = [r for r, b in ready.items() if b.get("status_code") != 200]
    if not_ready:
        problems.append(f"replica(s) {not_ready} not ready at the end")
    if len(set(versions.values())) != 1 or s.final.current not in versions.values():
        problems.append(f"replicas serve {versions}, CURRENT is {s.final.current}")
    return verdict("same_current", problems, {"replicas": versions, "current": s.final.current})


def same_catalog_seq(s: StateCtx) -> Result:
    seqs: dict[str, Any] = {}
    for replica, body in s.final.ready.items():
        seqs[replica] = next((body[k] for k in SEQ_KEYS if k in body), None)
    problems = []
    if any(v is None for v in seqs.values()):
        problems.append(
            "/readyz shows no catalog sequence (issue 28: catalog_seq, catalog_head, catalog_lag_s)"
        )
    elif len(set(seqs.values())) != 1:
        problems.append(f"replicas applied different sequences {seqs}")
    elif s.final.catalog_head is not None and set(seqs.values()) != {s.final.catalog_head}:
        problems.append(f"replicas at {seqs}, the database's head is {s.final.catalog_head}")
    if s.final.catalog_head is None:
        problems.append("the database has no catalog sequence (fusionrec_catalog_state)")
    return verdict("same_catalog_seq", problems, {"replicas": seqs, "head": s.final.catalog_head})


def _reached_both(s: StateCtx, version: str) -> float | None:
    """Seconds after the start when every replica's /readyz showed ``version``."""
    first: dict[str, float] = {}
    for sample in s.ctx.ledger.samples:
        if sample.version == version:
            first.setdefault(sample.replica, sample.t)
    names = {x.replica for x in s.ctx.ledger.samples}
    return max(first.values()) if names and set(first) == names else None


def retrain_published(s: StateCtx) -> Result:
    if "retrain_started_at" not in s.ctx.ledger.setup:
        return Result("retrain_published", "FAIL", "the retrain job was not started")
    if not s.retrained:
        refused = [d for d in s.final.decisions if not d.get("published")]
        why = (
            refused[-1].get("reason", "")
            if refused
            else s.ctx.ledger.setup.get("retrain_log_tail", "")
        )
        return Result(
            "retrain_published", "FAIL", f"no new CURRENT from the retrain job: {str(why)[:300]}"
        )
    problems, figures = [], {}
    for v in sorted(s.retrained):
        both = _reached_both(s, v)
        at = s.version_time.get(v)
        if both is None:
            problems.append(f"{v} never reached both replicas")
        elif at is not None:
            figures[v] = {"published_s": round(at, 1), "on_both_after_s": round(both - at, 1)}
            if both - at > 30:
                problems.append(
                    f"{v} reached both replicas {both - at:.0f} s after it was published"
                )
    return verdict("retrain_published", problems, figures)


def _ctr_table(s: StateCtx) -> dict[str, dict[str, float]]:
    """Per model lineage: step answers, the shoppers' clicks and purchases (what they did)
    and the rows of the log attributed to those answers by request id (what the system saw)."""
    by_rid = {x.request_id: x for x in s.ctx.ledger.shown if x.endpoint == "step" and x.request_id}
    table: dict[str, dict[str, float]] = defaultdict(
        lambda: {"answers": 0, "clicks": 0, "purchases": 0, "attributed_in_log": 0}
    )
    for version, clicked, bought in s.ctx.ledger.steps:
        row = table[s.lineage(version)]
        row["answers"] += 1
        row["clicks"] += clicked
        row["purchases"] += bought
    for rid, n in s.final.log_request_ids.items():
        if rid in by_rid:
            table[s.lineage(by_rid[rid].version)]["attributed_in_log"] += n
    for row in table.values():
        row["ctr"] = round(row["clicks"] / row["answers"], 4) if row["answers"] else 0.0
    return dict(table)


def attribution(s: StateCtx) -> Result:
    """Click-through per model: the system's attribution (request ids in answers and in the
    log) beside the shoppers' own count, the stale model vs the retrained one."""
    table = _ctr_table(s)
    steps = [x for x in s.ctx.ledger.shown if x.endpoint == "step"]
    gone = set(s.ctx.ledger.forgotten)  # a forgotten shopper's events are erased, rightly
    sent = sum(
        1
        for e in s.ctx.ledger.events
        if e.request_id and e.outcome == "ok" and e.user_id not in gone
    )
    logged = sum(s.final.log_request_ids.values())
    problems = []
    if steps and not any(x.request_id for x in steps):
        problems.append("recommend answers carry no request_id (issue 29)")
    if "request_id" not in s.final.log_columns:
        problems.append("the event log has no request_id column")
    elif logged < sent:
        problems.append(
            f"{sent} attributed events answered 200, {logged} with a request id in the log"
        )
    if "retrained" not in table:
        problems.append("no answer came from a retrained model: nothing to compare")
    pattern = r"^(\w*(?:attribut|click)\w*)"
    metrics = sorted({m for t in s.final.metrics.values() for m in re.findall(pattern, t, re.M)})
    return verdict("attribution", problems, {"per_model": table, "metrics": metrics})


def _flat(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in body.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_healthy(s: StateCtx) -> Result:
    """The log's health is visible (spool depth, quarantined count in /readyz and /metrics)
    and, at the end, nothing is left in a spool."""
    problems = []
    for replica, body in s.final.ready.items():
        flat = _flat(body)
        keys = [k for k in flat if "spool" in k or "quarantin" in k]
        if not keys:
            problems.append(
                f"replica {replica}: /readyz shows no spool depth or quarantine count (issue 29)"
            )
        spooled = {k: flat[k] for k in keys if "spool" in k and "age" not in k}
        if any(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            for v in spooled.values()
        ):
            problems.append(f"replica {replica}: events still spooled at the end ({spooled})")
    for replica, text in s.final.metrics.items():
        if not re.search(r"^fusionrec_events_(spool|quarantin)", text, re.M):
            problems.append(
                f"replica {replica}: /metrics has no fusionrec_events_spool*/quarantined* series"
            )
    return verdict("log_healthy", problems, {"quarantined_rows": s.final.quarantined})
