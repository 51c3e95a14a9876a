"""What the clients saw, in memory: every request, every event and catalog write with the
answer it got, every recommendation shown, every fault window. The checks compare it with
what the system holds at the end."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "refused", "unknown"]


@dataclass
class Call:
    t: float  # seconds after the start, when sent
    endpoint: str
    role: str  # shopper, admin, hostile, probe
    status: int  # 0: no HTTP answer (connection error, timeout)
    ms: float
    kind: str  # ok, client_error, 503_retry_after, 503_no_retry_after, server_error, …
    upstream: str = ""  # the replica nginx used (X-Upstream), when known
    case: str = ""  # the hostile case, or a note


@dataclass
class SentEvent:
    user_id: str
    item_id: str
    type: str
    request_id: str | None
    via: str  # single, batch
    outcome: Outcome
    t: float
    status: int = 0
    reason: str = ""


@dataclass
class CatalogWrite:
    op: str  # add, edit, hide, show, delete
    item_id: str
    expect: dict[str, Any] | None  # fields the item must show afterwards; None = deleted
    outcome: Outcome
    t_sent: float
    t_ack: float
    status: int
    replica: str = ""
    propagation_s: float | None = None  # until the other replica showed it (None = never)
    concurrent: bool = False


@dataclass
class Shown:
    """One answer with items: which version, which request id, for which shopper."""

    t: float
    endpoint: str
    version: str
    request_id: str | None
    user_id: str | None
    items: list[str]


@dataclass
class Window:
    name: str
    start: float
    end: float | None = None  # when recovered (None = never observed)
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def covers(self, t: float, grace: float, horizon: float) -> bool:
        end = self.end if self.end is not None else horizon
        return self.start <= t <= end + grace


@dataclass
class Sample:
    """The system's own view, sampled every second by the monitor."""

    t: float
    replica: str
    ready: bool
    version: str | None
    body: dict[str, Any]


class Ledger:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.calls: list[Call] = []
        self.events: list[SentEvent] = []
        self.writes: list[CatalogWrite] = []
        self.shown: list[Shown] = []
        self.windows: list[Window] = []
        self.samples: list[Sample] = []
        self.log_rows: list[tuple[float, int]] = []  # (t, rows in the event log)
        self.forgotten: dict[str, float] = {}  # user id -> when the 204 came
        self.not_available: dict[str, str] = {}  # feature -> why (the API answered 404)
        self.notes: list[str] = []
        self.setup: dict[str, Any] = {}
        self.hidden_since: dict[str, float] = {}  # item -> ack time of its hide/delete
        self.hidden_shown: list[tuple[float, str, str]] = []  # (t, endpoint, item)
        self.search_hits: Counter[str] = Counter()
        self.steps: list[tuple[str, bool, bool]] = []  # (version, clicked, purchased) per step

    def restart_clock(self) -> None:
        """Time 0 = the start of the traffic (after the stack is up)."""
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def window(self, name: str) -> Window:
        w = Window(name, self.now())
        self.windows.append(w)
        return w

    def in_fault(self, t: float, grace: float, horizon: float) -> str | None:
        for w in self.windows:
            if w.covers(t, grace, horizon):
                return w.name
        return None

    def note(self, text: str) -> None:
        self.notes.append(f"{self.now():7.1f}s {text}")

    def saw_items(self, shown: Shown, grace_s: float) -> None:
        """Record an answer; items hidden or deleted ``grace_s`` before it was sent are
        violations (a hidden item is never returned)."""
        self.shown.append(shown)
        for item in shown.items:
            since = self.hidden_since.get(item)
            if since is not None and since + grace_s < shown.t:
                self.hidden_shown.append((shown.t, shown.endpoint, item))
