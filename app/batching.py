"""The micro-batcher: concurrent requests' model work, gathered into one call per batch.

Each ``MicroBatcher`` owns one worker thread. ``submit`` (from the event loop) queues a job
and awaits its future; the worker takes the first job, gathers whatever else is queued (up
to ``max_size``, waiting at most ``max_wait_s`` for more), runs ``fn`` on the batch and
settles every future on its caller's loop. An exception of ``fn`` reaches every caller of
that batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("app.batching")
J = TypeVar("J")
R = TypeVar("R")
_STOP = object()


class MicroBatcher(Generic[J, R]):
    def __init__(
        self,
        name: str,
        fn: Callable[[list[J]], list[R]],
        *,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._thread.start()
            self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        if self._started:
            self._q.put(_STOP)
            self._thread.join(timeout)
            self._started = False

    async def submit(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._q.put((job, fut, loop))
        return await fut

    def _gather(
        self, first: object
    ) -> tuple[list[tuple[J, asyncio.Future[R], asyncio.AbstractEventLoop]], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            jobs = [job for job, _, _ in batch]
            try:
                results: list[R] | None = self.fn(jobs)
                error: BaseException | None = None
            except BaseException as exc:  # delivered to every caller of the batch
                results, error = None, exc
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            for i, (_, fut, loop) in enumerate(batch):
                value = results[i] if results is not None else None
                try:
                    loop.call_soon_threadsafe(_settle, fut, value, error)
                except RuntimeError:  # the caller's loop is closed
                    log.debug("dropping a result for a closed event loop")
            if stop:
                return


def _settle(fut: asyncio.Future[R], value: R | None, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)  # type: ignore[arg-type]
