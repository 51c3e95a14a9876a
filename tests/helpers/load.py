"""Load from client threads against a live server, and reading Prometheus samples."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    sent: float  # monotonic
    done: float
    status: int  # 0 = transport error
    body: dict[str, object] | None
    error: str = ""


@dataclass
class LoadThread:
    """Closed-loop clients in threads, each sending ``make_request(i)`` until stopped."""

    url: str
    make_request: Callable[[int], tuple[str, str, dict[str, object] | None]]
    clients: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            i = worker
            while not self._stop.is_set():
                method, path, body = self.make_request(i)
                t0 = time.monotonic()
                try:
                    r = c.request(method, path, json=body)
                    parsed = (
                        r.json()
                        if r.headers.get("content-type", "").startswith("application/json")
                        else None
                    )
                    out = Outcome(
                        t0,
                        time.monotonic(),
                        r.status_code,
                        parsed,
                        "" if r.status_code < 400 else r.text[:300],
                    )
                except httpx.HTTPError as exc:
                    out = Outcome(t0, time.monotonic(), 0, None, repr(exc))
                with self._lock:
                    self.outcomes.append(out)
                i += self.clients

    def __enter__(self) -> LoadThread:
        for w in range(self.clients):
            t = threading.Thread(target=self._run, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample from a /metrics body (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == name or (
            want
            and head.startswith(name + "{")
            and all(f'{k}="{v}"' in head for k, v in labels.items())
        ):
            return float(value)
    return 0.0
