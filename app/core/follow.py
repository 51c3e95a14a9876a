"""Every replica follows the store's CURRENT by itself.

A background task reads the CURRENT pointer every ``poll_s`` seconds (one small file read)
and hot-swaps when it names another version, with the refusal rules of
:meth:`SnapshotHolder.reload` (a broken bundle is refused once and not retried until CURRENT
changes again). When Redis is configured, a publisher (this service after an item upsert,
``notify_current``) also sends the new version on a pub/sub channel, and every replica
subscribed to it reloads at once instead of at its next poll. ``POST /admin/reload`` stays
for forcing a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import redis.asyncio as aioredis

from app.core.snapshot import SnapshotHolder
from app.settings import FollowSettings
from model_store.bundle import store as store_mod
from model_store.errors import FusionrecError

log = logging.getLogger("app.follow")

CHANNEL = "fusionrec:current"


class CurrentFollower:
    """Keeps ``holder`` on the store's CURRENT: a poll, woken early by pub/sub."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        poll_s: float,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.holder = holder
        self.store = holder.store
        self.poll_s = poll_s
        self.redis = redis
        self._refused: str | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.swaps = 0

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll(), name="follow-current"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="follow-pubsub"))

    async def stop(self) -> None:
        """Cancel the poll and the subscription and close the subscriber's client."""
        await cancel_tasks(self._tasks)
        if self.redis is not None:
            await self.redis.aclose()

    async def check(self) -> bool:
        """Reload when CURRENT names another version; True when a swap happened."""
        try:
            name = store_mod.current_version(self.store)
        except FusionrecError:
            return False  # nothing published (yet), or a pointer being replaced
        snap = self.holder.snapshot
        if (snap is not None and snap.version == name) or name == self._refused:
            return False
        try:
            result = await self.holder.reload()
        except FusionrecError as exc:
            self._refused = name
            log.error("CURRENT=%s refused, still serving the previous bundle: %s", name, exc)
            return False
        if result.reloaded:
            self.swaps += 1
            log.info("followed CURRENT: %s -> %s", result.previous_version, result.model_version)
        return result.reloaded

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # the follower must outlive any single failure
                log.exception("following CURRENT failed; retrying at the next poll")

    async def _listen(self) -> None:
        assert self.redis is not None
        await listen(self.redis, CHANNEL, self._wake, retry_s=self.poll_s)


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a follower's background tasks and wait for them (their errors are theirs)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()


async def listen(
    redis: aioredis.Redis, channel: str, wake: asyncio.Event, *, retry_s: float
) -> None:
    """Set ``wake`` on every message published on ``channel``, resubscribing after
    ``retry_s`` when Redis is lost (the follower's poll keeps working meanwhile)."""
    while True:
        try:
            pubsub = redis.pubsub()
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down: the poll keeps working meanwhile
            log.debug("pub/sub on %s lost (%s); resubscribing", channel, type(exc).__name__)
            await asyncio.sleep(retry_s)


async def notify_current(redis: aioredis.Redis | None, version: str) -> None:
    """Tell every subscribed replica that CURRENT now names ``version`` (best effort: the
    poll catches up when Redis is down)."""
    if redis is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(redis.publish(CHANNEL, version), timeout=1.0)


def pubsub_client(url: str | None) -> aioredis.Redis | None:
    """A Redis client of its own for the subscription: no socket timeout (a subscriber waits
    for messages), unlike the request path's client."""
    if url is None:
        return None
    return aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=2.0)


def start_following(
    holder: SnapshotHolder, settings: FollowSettings, redis_url: str | None
) -> CurrentFollower | None:
    """Follow CURRENT (``settings.poll_s`` > 0) and announce this process's publications on
    the channel; None when following is off."""
    if settings.poll_s <= 0:
        return None
    follower = CurrentFollower(holder, poll_s=settings.poll_s, redis=pubsub_client(redis_url))
    holder.on_publish = functools.partial(notify_current, follower.redis)
    follower.start()
    return follower
