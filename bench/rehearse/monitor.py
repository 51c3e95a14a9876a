"""The system's own view, sampled every second while the rehearsal runs: each replica's
/readyz (version, catalog sequence and lag, Redis breaker, spool), the store's CURRENT, the
event log's row count, and whether the retrain job is working (its CPU time grows)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench.rehearse import store as store_mod
from bench.rehearse.ledger import Ledger, Sample, Window
from bench.rehearse.stack import Stack

EVENTS_TABLE = "fusionrec_events"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its reaped children (``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Monitor:
    def __init__(self, stack: Stack, ledger: Ledger) -> None:
        self.stack, self.ledger = stack, ledger
        self.client = httpx.AsyncClient(timeout=2.0)
        self.engine = sa.create_engine(
            stack.events_url, pool_pre_ping=True, connect_args={"connect_timeout": 2}
        )
        self.current: list[tuple[float, str]] = []  # (t, the store's CURRENT)
        self.retrain_busy: list[tuple[float, bool]] = []
        self._cpu: float | None = None
        self._tick = 0

    async def _ready(self) -> None:
        for r in self.stack.replicas:
            t = self.ledger.now()
            try:
                resp = await self.client.get(f"{r.url}/readyz")
                body = (
                    resp.json()
                    if resp.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                ready = resp.status_code == 200
            except (httpx.HTTPError, ValueError):
                body, ready = {}, False
            version = body.get("model_version") if ready else None
            self.ledger.samples.append(Sample(t, r.name, ready, version, body))

    def log_rows(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(EVENTS_TABLE):
                    return 0
                return int(
                    conn.execute(sa.text(f"SELECT count(*) FROM {EVENTS_TABLE}")).scalar_one()
                )
        except sa.exc.SQLAlchemyError:
            return None

    def _retrain(self) -> None:
        proc = self.stack.retrainer
        if proc is None or proc.poll() is not None:
            return
        cpu = cpu_seconds(proc.pid)
        if cpu is None:
            return
        busy = self._cpu is not None and cpu - self._cpu > 0.3
        self._cpu = cpu
        self.retrain_busy.append((self.ledger.now(), busy))

    async def sample(self) -> None:
        await self._ready()
        with contextlib.suppress(OSError):
            self.current.append((self.ledger.now(), store_mod.current(self.stack.store)))
        self._retrain()
        self._tick += 1
        if self._tick % 2 == 0:
            rows = await asyncio.to_thread(self.log_rows)
            if rows is not None:
                self.ledger.log_rows.append((self.ledger.now(), rows))

    async def run(self, until: float) -> None:
        while self.ledger.now() < until:
            t = self.ledger.now()
            try:
                await self.sample()
            except Exception as exc:  # the monitor never stops the rehearsal
                self.ledger.note(f"monitor error: {exc!r}")
            await asyncio.sleep(max(0.0, 1.0 - (self.ledger.now() - t)))

    def retrain_windows(self, horizon: float) -> list[Window]:
        """Contiguous stretches when the retrain job was working."""
        out: list[Window] = []
        current: Window | None = None
        for t, busy in self.retrain_busy:
            if busy and current is None:
                current = Window("retrain", t - 1.0)
            elif not busy and current is not None:
                current.end = t
                out.append(current)
                current = None
        if current is not None:
            current.end = horizon
            out.append(current)
        return out

    async def close(self) -> None:
        await self.client.aclose()
        self.engine.dispose()
