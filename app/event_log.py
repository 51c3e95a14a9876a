"""The service's writer of the event log: group commit, a disk spool through outages.

``record`` hands a request's events to one writer thread and returns once they are
durable: committed in the database (many requests share one transaction), or — while the
database is down — appended and fsynced to this process's spool file. The spool is written
back, in order, before anything newer, as soon as the database answers again; each process
holds a lock on its own spool file, and a spool whose process died is adopted and written
back by any writer sharing the spool directory (the next start, another replica). Rows
carry a unique ``event_id``, so a batch whose commit was acknowledged too late for us to
see is not stored twice. So: an event answered 200 is in the log or in a spool, and reaches
the log exactly once.

Bounded: at most ``max_pending`` events wait for the thread and the spool holds at most
``spool_max_bytes``; beyond that ``record`` raises :class:`DependencyError` (503 with
Retry-After) and the event is refused rather than kept in memory.

Erasure (``erase``) takes the same queue and spool, so a user's events written before the
erasure are erased with it, whatever the order of outages.

Permanent vs transient (:func:`model_store.database.is_permanent`): only an unreachable
database spools. An event the database refuses for good (a constraint, a value a column
cannot hold) is found by splitting the failed batch in halves, kept in the
``fusionrec_events_quarantine`` table with the reason (or, when that cannot be written
either, in ``quarantined-events.ndjson`` beside the spools) and counted; the rest of the batch, and
any erasure behind it, is committed. A spool line that cannot be read back is quarantined to
the file the same way, so a poisoned spool never loops after a restart.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from app.event_ops import QUARANTINE_FILE, Op, last_byte, parse, permanent, reason, resolve
from model_store.database import redact
from model_store.errors import DependencyError
from model_store.events.log import Event, EventStore, iter_chunks

log = logging.getLogger("fusionrec.events")

_STOP = object()


class EventLogWriter:
    def __init__(
        self,
        store: EventStore,
        spool_dir: Path,
        *,
        max_pending: int = 20_000,
        spool_max_bytes: int = 256 * 2**20,
        batch: int = 1_000,
        retry_s: float = 1.0,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        # one spool file per process, locked for its life: a file nobody holds was left by a
        # process that died, and any writer adopts it (writes it back, then deletes it)
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = (
            spool_dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        )
        self._spool_file: BinaryIO = open(self.spool, "a+b")  # noqa: SIM115 - held for life
        fcntl.flock(self._spool_file.fileno(), fcntl.LOCK_EX)
        self.max_pending = max_pending
        self.spool_max_bytes = spool_max_bytes
        self.batch = batch
        self.retry_s = retry_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._written = 0
        self.quarantined = 0  # events quarantined by this process
        self._spooled_events = 0  # in our own spool file
        self._spooled_since: float | None = None  # unix time of its oldest line
        self._thread = threading.Thread(target=self._run, name="fusionrec-event-log", daemon=True)
        self._thread.start()

    # -- the request side ----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    @property
    def pending(self) -> int:
        return self._pending

    def spooled_bytes(self) -> int:
        return os.fstat(self._spool_file.fileno()).st_size

    def health(self) -> dict[str, float | int | bool]:
        """What /readyz and /metrics show of the log: spool depth and age, quarantine."""
        orphans = self._orphans()
        ages = [time.time() - p.stat().st_mtime for p in orphans if p.exists()]
        if self._spooled_since is not None:
            ages.append(time.time() - self._spooled_since)
        return {
            "healthy": self.healthy,
            "pending_events": self._pending,
            "spooled_events": self._spooled_events,
            "spooled_bytes": self.spooled_bytes()
            + sum(p.stat().st_size for p in orphans if p.exists()),
            "oldest_spooled_age_s": round(max(ages), 3) if ages else 0.0,
            "quarantined_events": self.quarantined,
        }

    async def record(self, events: Sequence[Event]) -> None:
        """Return once ``events`` are committed or spooled (durable either way)."""
        await self._submit(Op("insert", events=list(events)))

    async def erase(self, user_key: str) -> None:
        """Return once the erasure of ``user_key``'s events is committed or spooled."""
        await self._submit(Op("erase", user_key=user_key))

    async def _submit(self, op: Op) -> None:
        with self._lock:
            full = self._pending + op.size() > self.max_pending
            if not full:
                self._pending += op.size()
        if full or self.spooled_bytes() > self.spool_max_bytes:
            if not full:
                with self._lock:
                    self._pending -= op.size()
            raise DependencyError(
                "the event log is not keeping up (database "
                f"{'down' if self._down_since else 'slow'}; {self._pending} events waiting); "
                "retry later",
                dependency="event_log",
                retry_after_s=max(1.0, self.retry_s * 2),
            )
        loop = asyncio.get_running_loop()
        op.loop, op.done = loop, loop.create_future()
        self._queue.put(op)
        await op.done

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted event is durable; True when none is left."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self._pending == 0

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self.store.close()
        if not self._thread.is_alive():
            if self.spooled_bytes() == 0:
                self.spool.unlink(missing_ok=True)
            self._spool_file.close()  # a non-empty spool is adopted by the next writer

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._replay()  # spools left by processes that died during an outage
        while True:
            try:
                # while something waits in a spool, wake up to write it back by ourselves
                first = self._queue.get(timeout=self.retry_s if self._orphans_or_spool() else None)
            except queue.Empty:
                self._replay()
                continue
            if first is _STOP:
                self._replay()
                return
            ops = [first]
            n = ops[0].size()  # type: ignore[attr-defined]
            while n < self.batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                ops.append(nxt)
                n += nxt.size()  # type: ignore[attr-defined]
            self._write([op for op in ops if isinstance(op, Op)])

    def _write(self, ops: list[Op]) -> None:
        error: BaseException | None = None
        if self._replay():
            try:
                self._apply(ops)
            except Exception as e:  # any database failure means: spool it
                self._went_down(e)
                error = self._spool(ops)
        else:
            error = self._spool(ops)
        with self._lock:
            self._pending -= sum(op.size() for op in ops)
        for op in ops:
            resolve(op, error)

    def _apply(self, ops: Sequence[Op]) -> None:
        """Inserts are grouped into one statement between erasures, in order."""
        run: list[Event] = []
        for op in ops:
            if op.kind == "insert":
                run.extend(op.events)
                continue
            for chunk in iter_chunks(run, self.batch):
                self._insert(chunk)
            run = []
            self.store.erase_user(op.user_key)
        for chunk in iter_chunks(run, self.batch):
            self._insert(chunk)

    def _insert(self, chunk: list[Event]) -> None:
        """Insert ``chunk``; on a permanent error, split it until the refused events are
        alone, and quarantine those (a transient error propagates: spool and retry)."""
        try:
            self._written += self.store.insert(chunk)
        except Exception as e:
            if not permanent(e):
                raise
            if len(chunk) == 1:
                self._quarantine(chunk[0], reason(e))
                return
            half = len(chunk) // 2
            self._insert(chunk[:half])
            self._insert(chunk[half:])

    def _quarantine(self, event: Event, reason: str) -> None:
        self.quarantined += 1
        log.error(
            "event %s refused by the event log for good (%s); quarantined",
            event.event_id,
            reason,
        )
        try:
            self.store.quarantine(event, reason)
        except Exception:  # the database cannot take it either: the file keeps it
            self._quarantine_file({"event": asdict(event), "reason": reason})

    def _quarantine_file(self, row: dict[str, object]) -> None:
        path = self.spool_dir / QUARANTINE_FILE
        with open(path, "a", encoding="ascii") as f:
            f.write(json.dumps({**row, "at": time.time()}, ensure_ascii=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _went_down(self, e: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.time()
            log.warning(
                "event log %s is unreachable (%s); spooling events to %s",
                redact(self.store.url),
                type(e).__name__,
                self.spool,
            )
        self._next_try = time.monotonic() + self.retry_s

    def _spool(self, ops: Sequence[Op]) -> BaseException | None:
        f = self._spool_file
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() and last_byte(f) != b"\n":
                f.write(b"\n")  # a line torn by a failed write: keep the next one whole
            for op in ops:
                f.write(op.line().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            self._spooled_events += sum(op.size() for op in ops)
            if self._spooled_since is None:
                self._spooled_since = time.time()
        except OSError as e:
            log.error("event spool %s cannot be written: %s", self.spool, e.strerror)
            return DependencyError(
                "the event log is down and its spool cannot be written; retry later",
                dependency="event_log",
            )
        return None

    def _parse_all(self, data: bytes) -> list[Op]:
        """The operations of a spool file; a line that cannot be read as one is quarantined
        to the file."""
        lines = data.decode("utf-8", "replace").splitlines()
        ops = []
        for line in lines:
            try:
                ops.append(parse(line))
            except json.JSONDecodeError:  # torn by a crash mid-write: never answered 200
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                self.quarantined += 1
                log.error("unreadable event spool line quarantined: %s", reason(e))
                self._quarantine_file({"line": line, "reason": reason(e)})
        return ops

    def _orphans(self) -> list[Path]:
        return [p for p in sorted(self.spool_dir.glob("*.jsonl")) if p != self.spool]

    def _orphans_or_spool(self) -> bool:
        return self.spooled_bytes() > 0 or bool(self._orphans())

    def _adopt(self, path: Path) -> None:
        """Write back the spool of a dead process (skipped while its owner holds it)."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the unlink
        except FileNotFoundError:
            return  # adopted by another writer meanwhile
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its process is alive
            if not path.exists():
                return
            self._apply(self._parse_all(f.read()))
            path.unlink()
            log.warning("event spool %s of a stopped process written back", path.name)
        finally:
            f.close()

    def _replay(self) -> bool:
        """Write the spools back (ours, then those left by dead processes); True when ours
        is empty and the database answers."""
        if time.monotonic() < self._next_try:
            return False
        try:
            if self.spooled_bytes():
                f = self._spool_file
                f.seek(0)
                self._apply(self._parse_all(f.read()))
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
                self._spooled_events, self._spooled_since = 0, None
            for orphan in self._orphans():
                self._adopt(orphan)
        except Exception as e:  # still down: keep the spools as they are
            self._went_down(e)
            return False
        if self._down_since is not None:
            log.warning(
                "event log %s is back after %.1f s; spooled events written back",
                redact(self.store.url),
                time.time() - self._down_since,
            )
        self._down_since = None
        return True
