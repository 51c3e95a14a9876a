"""Every replica follows the catalog table: it applies the changes after its sequence.

A background task reads the table's head every ``poll_s`` seconds (0.5: one indexed
``max(seq)``) and applies the rows after the snapshot's ``catalog_seq``
(:func:`app.core.catalog_apply.catch_up`, under the holder's admin lock, so reloads and
applies never interleave); with Redis configured, a writer's ``notify`` on the
``fusionrec:catalog`` channel wakes every subscriber at once. The database down: the poll
keeps trying, reads keep serving the snapshot as it is, ``catalog_lag_s`` grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis

from app.core.catalog_apply import catch_up, warm
from app.core.follow import cancel_tasks, listen, pubsub_client
from app.core.snapshot import Snapshot, SnapshotHolder
from model_store.bundle.retention import REFRESH_S, clear_serving, report_serving
from model_store.catalog.table import CatalogStore
from model_store.errors import FusionrecError

log = logging.getLogger("app.catalog")

CHANNEL = "fusionrec:catalog"
POLL_S = 0.5


class CatalogFollower:
    """Keeps ``holder``'s snapshot at the catalog table's head."""

    def __init__(
        self,
        holder: SnapshotHolder,
        store: CatalogStore,
        *,
        poll_s: float = POLL_S,
        redis_url: str | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.poll_s = poll_s
        self.redis: aioredis.Redis | None = pubsub_client(redis_url)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._warming: asyncio.Future[None] | None = None
        holder.catch_up = self._catch_up

    def _catch_up(self, snap: Snapshot) -> Snapshot:
        """At a load (off the request path): apply, and warm the tables for the catalog."""
        h = self.holder
        before = snap.bundle.model.catalog_version
        out = catch_up(snap, self.store, lock=h.model_lock, device=h.device)
        if out.bundle.model.catalog_version != before:
            warm(out, lock=h.model_lock)
        return out

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll(), name="catalog-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="catalog-pubsub"))

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        clear_serving(self.holder.store)

    async def sync(self, upto: int | None = None) -> int:
        """Apply the changes up to the head (or at least ``upto``); the applied sequence."""
        holder = self.holder
        head = await asyncio.to_thread(self.store.head) if upto is None else upto
        holder.note_head(head)
        snap = holder.snapshot
        if snap is None or snap.catalog_seq >= head:
            return snap.catalog_seq if snap is not None else 0
        async with holder.admin_lock:
            snap = holder.snapshot
            if snap is None or snap.catalog_seq >= head:
                return snap.catalog_seq if snap is not None else 0
            before = snap.bundle.model.catalog_version  # the bundle is changed in place
            new = await asyncio.to_thread(
                catch_up,
                snap,
                self.store,
                lock=holder.model_lock,
                device=holder.device,
                head=max(head, holder.catalog_head),
            )
            holder.install(new, full_gc=False)
        if new.bundle.model.catalog_version != before:
            self._warm(new)
        return new.catalog_seq

    def _warm(self, snap: Snapshot) -> None:
        """The serving tables rebuilt in the background where needed (one at a time)."""
        if self._warming is not None and not self._warming.done():
            self._warming.add_done_callback(lambda _: self._warm(snap))
            return
        lock = self.holder.model_lock
        self._warming = asyncio.ensure_future(asyncio.to_thread(warm, snap, lock=lock))

    async def notify(self, seq: int) -> None:
        """Tell the subscribed replicas that the head is ``seq`` (best effort: they poll)."""
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.publish(CHANNEL, str(seq)), timeout=1.0)

    async def _poll(self) -> None:
        reported = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            self._wake.clear()
            snap = self.holder.snapshot
            if snap is not None and time.monotonic() - reported > REFRESH_S:
                reported = time.monotonic()  # still serving it: `fusionrec gc` keeps it
                await asyncio.to_thread(report_serving, self.holder.store, snap.version)
            try:
                await self.sync()
            except FusionrecError as exc:
                log.debug("catalog head unavailable (%s); retrying", exc)
            except Exception:  # the follower must outlive any single failure
                log.exception("applying catalog changes failed; retrying at the next poll")

    async def _listen(self) -> None:
        assert self.redis is not None
        await listen(self.redis, CHANNEL, self._wake, retry_s=1.0)
