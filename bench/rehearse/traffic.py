"""The traffic phase: every driver, the faults and the monitor at once, for the duration.

Drivers are open-loop: an operation starts every 1/rate seconds whether or not the
previous ones have finished (as shoppers do), up to a bound of operations in flight; one
started late because of that bound is counted, not silently skipped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.rehearse.admin import Admin
from bench.rehearse.client import Http
from bench.rehearse.dataset import Replay
from bench.rehearse.events import EventSender
from bench.rehearse.faults import Faults
from bench.rehearse.hostile import Case, Hostile, cases
from bench.rehearse.ledger import Ledger
from bench.rehearse.monitor import Monitor
from bench.rehearse.plan import Plan
from bench.rehearse.shoppers import Shoppers
from bench.rehearse.stack import Stack


async def paced(
    ledger: Ledger, rate: float, until: float, op: Callable[[], Awaitable[None]], *,
    limit: int = 64, name: str = "",
) -> None:  # fmt: skip
    if rate <= 0:
        return
    tasks: set[asyncio.Task[None]] = set()
    start, n, dropped = ledger.now(), 0, 0

    async def guarded() -> None:
        try:
            await op()
        except Exception as exc:  # a driver's bug is reported, never stops the rehearsal
            ledger.note(f"{name} driver error: {exc!r}")

    while True:
        due = start + n / rate
        if due >= until:
            break
        await asyncio.sleep(max(0.0, due - ledger.now()))
        if len(tasks) < limit:
            task = asyncio.create_task(guarded())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            dropped += 1
        n += 1
    if tasks:
        await asyncio.gather(*tasks)
    ledger.setup.setdefault("dropped", {})[name] = dropped


@dataclass
class Drivers:
    shoppers: Shoppers
    admin: Admin
    hostile: Hostile
    sender: EventSender
    monitor: Monitor
    faults: Faults
    cases: list[Case]
    clients: list[Http]


def popular(history: Path, n: int) -> list[str]:
    inter = pd.read_csv(history / "interactions.csv", usecols=["item_id"], dtype=str)
    return list(inter["item_id"].value_counts().index[:n])


def build(
    plan: Plan,
    stack: Stack,
    ledger: Ledger,
    replay: Replay,
    text_columns: list[str],
    retrain_cfg: Path,
) -> Drivers:
    assert stack.nginx is not None
    lb, s = stack.nginx.url, stack.secrets
    admin_headers = {"x-api-key": s.admin_key, "authorization": f"Bearer {s.admin_token}"}
    shop = Http(lb, ledger, "shopper", headers={"x-api-key": s.shopper_key})
    admin_lb = Http(lb, ledger, "admin", local_address="127.0.0.3", headers=admin_headers)
    direct = {
        r.addr: Http(r.url, ledger, "admin", local_address="127.0.0.3", headers=admin_headers)
        for r in stack.replicas
    }
    fault = {r.name: Http(r.url, ledger, "fault", headers=admin_headers) for r in stack.replicas}
    bad = Http(lb, ledger, "hostile", local_address="127.0.0.2", timeout_s=30)
    targets = popular(replay.history_dir, 5)
    sender = EventSender(shop, ledger, batch_share=plan.batch_share, seed=plan.seed)
    shoppers = Shoppers(
        shop, ledger, replay, sender, cold_share=plan.cold_share, seed=plan.seed, avoid=set(targets)
    )
    admin = Admin(
        admin_lb, direct, ledger, shoppers, text_columns=text_columns, genres=replay.genres,
        catalog_targets=targets, seed=plan.seed,
    )  # fmt: skip
    all_cases = cases(s.shopper_key, s.admin_token, s.admin_key, targets[0])
    return Drivers(
        shoppers, admin, Hostile(bad, all_cases), sender, Monitor(stack, ledger),
        Faults(plan, stack, ledger, fault, retrain_cfg), all_cases,
        [shop, admin_lb, *direct.values(), *fault.values(), bad],
    )  # fmt: skip


async def run(plan: Plan, d: Drivers, ledger: Ledger) -> None:
    end = plan.duration_s
    faults = asyncio.create_task(d.faults.run())
    await asyncio.gather(
        d.monitor.run(end + 3),
        paced(ledger, plan.read_rate, end, d.shoppers.read, name="reads"),
        paced(ledger, plan.step_rate, end, d.shoppers.step, name="steps"),
        paced(ledger, plan.admin_rate, end, d.admin.tick, limit=1, name="admin"),
        paced(ledger, plan.hostile_rate, end, d.hostile.tick, limit=2, name="hostile"),
        d.sender.run_batches(end),
    )
    if not faults.done():  # a fault still recovering at the end: give it a little time
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(faults), 60)
        faults.cancel()
    await d.monitor.close()
    for c in d.clients:
        await c.close()
