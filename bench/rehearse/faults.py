"""Faults on a schedule, each one a window in the ledger from its start to the recovery the
system itself shows (a replica's /readyz, the Redis breaker closing, the log growing again):
kill -9 of a replica and its restart, Redis restarted, PostgreSQL stopped, a corrupt bundle
published (then CURRENT restored), and the retrain job started."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.rehearse import store as store_mod
from bench.rehearse.client import Http
from bench.rehearse.ledger import Ledger, Window
from bench.rehearse.plan import Plan
from bench.rehearse.stack import Stack

RECOVERY_TIMEOUT_S = 120.0


class Faults:
    def __init__(
        self, plan: Plan, stack: Stack, ledger: Ledger, admin: dict[str, Http], retrain_cfg: Path
    ) -> None:
        self.plan, self.stack, self.ledger = plan, stack, ledger
        self.admin = admin  # an admin client per replica (direct, not through the LB)
        self.retrain_cfg = retrain_cfg
        self.kills = 0

    async def run(self) -> None:
        jobs = [(t, name) for t, name in self.plan.fault_times()]
        if self.plan.retrain_at >= 0:
            jobs.append((self.plan.retrain_at * self.plan.duration_s, "retrain_job"))
        tasks = []
        for at, name in sorted(jobs):  # on time: a slow recovery never delays the next fault
            await asyncio.sleep(max(0.0, at - self.ledger.now()))
            tasks.append(asyncio.create_task(self._one(name)))
        await asyncio.gather(*tasks)

    async def _one(self, name: str) -> None:
        self.ledger.note(f"fault {name}")
        try:
            await getattr(self, name)()
        except Exception as exc:  # a fault that cannot be injected is reported, not fatal
            self.ledger.note(f"fault {name} failed: {exc!r}")
            self.ledger.setup.setdefault("fault_errors", []).append(f"{name}: {exc!r}")

    async def _until(self, w: Window, ready: object, timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
        """Close ``w`` when ``ready()`` (a callable returning bool) holds, or note a timeout."""
        t0 = self.ledger.now()
        while self.ledger.now() - t0 < timeout_s:
            if ready():  # type: ignore[operator]
                w.end = self.ledger.now()
                return
            await asyncio.sleep(0.25)
        w.notes.append(f"not recovered within {timeout_s:.0f} s")

    def _latest(self, replica: str) -> dict[str, object]:
        for s in reversed(self.ledger.samples):
            if s.replica == replica:
                return {"ready": s.ready, **s.body}
        return {}

    async def kill_replica(self) -> None:
        r = self.stack.replicas[1 - self.kills % 2]
        self.kills += 1
        w = self.ledger.window("kill_replica")
        w.detail["replica"] = r.name
        await asyncio.to_thread(r.kill9)
        await asyncio.sleep(2.0)
        r.start()
        try:
            w.detail["ready_s"] = await asyncio.to_thread(r.wait_ready)
            w.end = self.ledger.now()
        except RuntimeError as exc:
            w.notes.append(str(exc))

    async def restart_redis(self) -> None:
        w = self.ledger.window("restart_redis")
        await asyncio.to_thread(self.stack.redis.stop)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(self.stack.redis.start)
        w.detail["restarted_at"] = self.ledger.now()
        names = [r.name for r in self.stack.replicas]
        await self._until(w, lambda: all(self._latest(n).get("redis") == "closed" for n in names))

    async def stop_postgres(self) -> None:
        pg = self.stack.postgres
        assert pg is not None
        w = self.ledger.window("stop_postgres")
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(self.plan.pg_stop_s)
        await asyncio.to_thread(pg.start)
        restarted = self.ledger.now()
        w.detail["restarted_at"] = restarted
        before = self.ledger.log_rows[-1][1] if self.ledger.log_rows else 0
        await self._until(
            w, lambda: any(t > restarted and n > before for t, n in self.ledger.log_rows)
        )

    async def corrupt_bundle(self) -> None:
        w = self.ledger.window("corrupt_bundle")
        name, previous = store_mod.publish_corrupt(self.stack.store)
        w.detail.update(corrupt=name, previous=previous, reloads={})
        await asyncio.sleep(4.0)  # the replicas' followers read CURRENT every second
        for replica, http in self.admin.items():
            reply = await http.call("POST", "/admin/reload", "admin_reload", case="corrupt")
            w.detail["reloads"][replica] = reply.status
        await asyncio.sleep(2.0)
        if store_mod.current(self.stack.store) == name:
            store_mod.set_current(self.stack.store, previous)
            w.detail["restored"] = previous
        else:
            w.notes.append("CURRENT moved away from the corrupt bundle by itself")
        w.end = self.ledger.now()

    async def retrain_job(self) -> None:
        every = self.plan.every_s()
        self.stack.start_retrainer(every, self.retrain_cfg, self.plan.retrain_margin)
        self.ledger.setup["retrain_started_at"] = self.ledger.now()
        self.ledger.setup["retrain_every_s"] = every
