"""The operations the event-log writer queues and spools, and how it sorts failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

from sqlalchemy import exc as sa_exc

from model_store.database import is_permanent, redact
from model_store.events.log import Event

# beside the spools, not named *.jsonl: a spool is adopted and written back, this is not
QUARANTINE_FILE = "quarantined-events.ndjson"


@dataclass
class Op:
    kind: str  # "insert" | "erase"
    events: list[Event] = field(default_factory=list)
    user_key: str = ""
    done: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def size(self) -> int:
        return max(1, len(self.events))

    def line(self) -> str:
        if self.kind == "insert":
            return json.dumps({"op": "insert", "events": [asdict(e) for e in self.events]})
        return json.dumps({"op": "erase", "user_key": self.user_key})


def resolve(op: Op, error: BaseException | None) -> None:
    fut, loop = op.done, op.loop
    if fut is None or loop is None:
        return

    def settle() -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(settle)


def last_byte(f: BinaryIO) -> bytes:
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(0, os.SEEK_END)
    return last


def parse(line: str) -> Op:
    """One spool line as an operation (ValueError, KeyError or TypeError when it is not)."""
    raw = json.loads(line)
    if raw.get("op") == "erase":
        return Op("erase", user_key=str(raw["user_key"]))
    return Op("insert", events=[Event(**e) for e in raw["events"]])


def permanent(e: BaseException) -> bool:
    """Retrying cannot help: a refusal of the database, or a value the driver cannot send
    (a string with a lone surrogate, a NUL byte for PostgreSQL)."""
    if is_permanent(e):
        return True
    if isinstance(e, sa_exc.StatementError) and not isinstance(e, sa_exc.DBAPIError):
        return isinstance(e.orig, ValueError | TypeError)
    return isinstance(e, ValueError | TypeError)


def reason(e: BaseException) -> str:
    detail = e.orig if isinstance(e, sa_exc.StatementError) and e.orig is not None else e
    first = (str(detail).splitlines() or [""])[0]
    return redact(f"{type(detail).__name__}: {first}")[:500]
