"""One rehearsal, start to end: data and store, the stack, the traffic phase, the system's
state, the checks, the report. Prints one line per check and, last,
``rehearsal: N checks passed, M failed``; the exit status is 1 when any check failed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import httpx

from bench.rehearse import checks_loop, report, state
from bench.rehearse import store as store_mod
from bench.rehearse.checks import Ctx, Result, traffic_checks
from bench.rehearse.checks_state import (
    StateCtx,
    catalog_in_database,
    catalog_writes_visible,
    events_batch,
    events_exactly_once,
    events_import,
    hostile_refused,
)
from bench.rehearse.client import Reply
from bench.rehearse.dataset import Replay, split
from bench.rehearse.ledger import Ledger
from bench.rehearse.plan import ROOT, Plan, from_args
from bench.rehearse.stack import Stack
from bench.rehearse.traffic import Drivers, build
from bench.rehearse.traffic import run as run_traffic


def prepare(plan: Plan, work: Path, log: Path) -> tuple[Replay, Path]:
    """The replay split and the source store (given, or trained once and cached)."""
    store_mod.ensure_data(plan.data, log)
    replay = split(plan.data, work, tail=plan.replay_tail)
    if plan.store is not None:
        return replay, plan.store
    cached = (
        ROOT
        / ".cache"
        / "rehearsal"
        / f"store-{plan.data.name}-t{plan.replay_tail}-e{plan.train_epochs}"
    )
    return replay, store_mod.ensure_store(cached, replay.history_dir, plan.train_epochs, log)


def text_columns(store: Path) -> list[str]:
    manifest = json.loads((store / store_mod.current(store) / "manifest.json").read_text())
    return list(manifest.get("data", {}).get("text_columns") or ["title"])


def items_on_replicas(stack: Stack, items: set[str], key: str) -> dict[str, dict[str, Reply]]:
    seen: dict[str, dict[str, Reply]] = {}
    headers = {"x-api-key": key}
    with httpx.Client(timeout=10, headers=headers) as client:
        for r in stack.replicas:
            got: dict[str, Reply] = {}
            for item in sorted(items):
                try:
                    resp = client.get(f"{r.url}/v1/items/{item}")
                    got[item] = Reply(resp.status_code, 0.0, resp.json() if resp.content else None)
                except (httpx.HTTPError, ValueError):
                    got[item] = Reply(0, 0.0)
            seen[r.name] = got
    return seen


def state_ctx(
    ctx: Ctx, stack: Stack, d: Drivers, monitor_current: list[tuple[float, str]]
) -> StateCtx:
    ledger = ctx.ledger
    users = (
        {e.user_id for e in ledger.events}
        | set(ledger.forgotten)
        | {"rh-hostile-1", "rh-hostile-9"}
    )
    items = {w.item_id for w in ledger.writes}
    key = stack.secrets.user_key
    state.settle(stack)
    final = state.read_all(stack, users, items, key, since=ledger.wall0 - 1.0)
    redis_users = {u: state.user_hash(u, key) for u in ledger.forgotten}
    state.read_redis(stack.redis.url, redis_users, final)
    found = store_mod.manifests(stack.store)
    initial = monitor_current[0][1] if monitor_current else final.current
    root0 = store_mod.root(initial, found)
    lineages = {v: "initial" if store_mod.root(v, found) == root0 else "retrained" for v in found}
    became_current = {v for _, v in monitor_current} | {final.current}
    corrupt = {w.detail.get("corrupt") for w in ledger.windows if w.name == "corrupt_bundle"}
    # the fault's corrupt bundle is CURRENT for a moment but is nobody's model
    retrained = {v for v in became_current if lineages.get(v) == "retrained" and v not in corrupt}
    times = {v: (store_mod.bundle_created(stack.store, v) or 0) - ledger.wall0 for v in found}
    read_at = {v: store_mod.snapshot_at(found.get(v, {})) for v in retrained}
    return StateCtx(
        ctx, final, key, items_on_replicas(stack, items, stack.secrets.shopper_key),
        {v: store_mod.bundle_users(stack.store, v) for v in retrained}, times, retrained, lineages,
        snapshots={v: t - ledger.wall0 for v, t in read_at.items() if t is not None},
    )  # fmt: skip


def all_checks(sctx: StateCtx) -> list[Result]:
    return [
        *traffic_checks(sctx.ctx),
        hostile_refused(sctx),
        events_import(sctx),
        events_batch(sctx),
        events_exactly_once(sctx),
        catalog_writes_visible(sctx),
        catalog_in_database(sctx),
        checks_loop.same_catalog_seq(sctx),
        checks_loop.same_current(sctx),
        checks_loop.forgotten_gone(sctx),
        checks_loop.forgotten_not_in_next_bundle(sctx),
        checks_loop.retrain_published(sctx),
        checks_loop.attribution(sctx),
        checks_loop.log_healthy(sctx),
    ]


def rehearse(plan: Plan, work: Path, ledger: Ledger) -> list[Result]:
    log = work / "setup.log"
    replay, source = prepare(plan, work, log)
    stack = Stack(work, store_mod.stage(source, work / "store"))
    try:
        stack.start_databases()
        ok, message, seconds = store_mod.import_history(
            stack.events_url, stack.store, replay.history_dir, log, stack.secrets.user_key
        )
        ledger.setup["import"] = {
            "ok": ok,
            "message": message,
            "seconds": round(seconds, 1),
            "rows": replay.history_rows,
        }
        ledger.setup["ready_s"] = stack.start_service()
        cfg = store_mod.retrain_config(work, plan.retrain_epochs)
        d = build(plan, stack, ledger, replay, text_columns(stack.store), cfg)
        # the log's rows before the traffic (the admin's first erasure may come at once)
        ledger.setup["import"]["logged"] = d.monitor.log_rows()
        ledger.restart_clock()
        asyncio.run(run_traffic(plan, d, ledger))
        horizon = ledger.now()
        ledger.windows.extend(d.monitor.retrain_windows(horizon))
        rlog = work / "retrain.log"
        tail = store_mod.last_message(rlog.read_text()) if rlog.exists() else ""
        ledger.setup["retrain_log_tail"] = tail
        ctx = Ctx(plan, ledger, horizon, d.cases)
        sctx = state_ctx(ctx, stack, d, d.monitor.current)
        ledger.setup["current_series"] = d.monitor.current[:: max(1, len(d.monitor.current) // 200)]
        return [
            Result("stack_started", "PASS", f"ready in {ledger.setup['ready_s']}"),
            *all_checks(sctx),
        ]
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    plan = from_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    work = plan.out / f"rehearsal-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger()
    print(f"rehearsal: {plan.duration_s:.0f} s, work and logs in {work}", flush=True)
    try:
        results = rehearse(plan, work, ledger)
    except Exception as exc:  # the stack could not be built: that is the finding
        traceback.print_exc()
        results = [Result("stack_started", "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")]
    for r in results:
        print(r.line(), flush=True)
    meta = {
        "command": " ".join(["bench/rehearsal.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": stamp, "plan": {k: str(v) for k, v in vars(plan).items()},
    }  # fmt: skip
    data = report.summary(results, ledger, meta)
    current = [(float(t), str(v)) for t, v in ledger.setup.get("current_series", [])]
    jpath, hpath = report.write(plan.out, "rehearsal", data, report.images(ledger, current))
    shutil.rmtree(work / "store", ignore_errors=True)
    print(f"report: {hpath} and {jpath}", flush=True)
    print(f"rehearsal: {data['passed']} checks passed, {data['failed']} failed", flush=True)
    return 0 if data["failed"] == 0 else 1


if __name__ == "__main__":
    time.tzset()
    raise SystemExit(main())
