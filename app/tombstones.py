"""Tombstones of forgotten users: recorded durably before ``DELETE /v1/users/{id}`` answers
204 and checked before a bundle's training history is used for a user.

* :class:`FileTombstones` (the embedded default): the store's append-only file
  (``model_store.privacy.users``), fsynced per forget, read back at start.
* :class:`RedisTombstones`: one Redis set (``keys.TOMBSTONES_KEY``) shared by every replica.
  While Redis cannot be reached a user this process has not seen forgotten is treated as
  forgotten (fail closed: served like a new user), because a replica cannot know whether
  another one forgot the user meanwhile.

A tombstone only suppresses data that predates the forget (the bundle's history, the
training data of the next bundle); events sent after it start a new history.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from app.keys import TOMBSTONES_KEY
from app.redis_gateway import RedisGateway
from model_store.errors import DependencyError
from model_store.privacy.users import append_tombstone, read_tombstones, tombstone_path

MAX_KNOWN = 100_000  # Redis setup: forgotten users remembered in process (an LRU)


class Tombstones(Protocol):
    async def add(self, uhash: str) -> None: ...

    async def contains(self, uhash: str) -> bool: ...


class FileTombstones:
    """Tombstones in the store's private append-only file, all held in memory (~120 B each)."""

    def __init__(self, store: Path) -> None:
        self.path = tombstone_path(store)
        self._known = read_tombstones(store)
        self._lock = asyncio.Lock()

    async def add(self, uhash: str) -> None:
        async with self._lock:
            if uhash in self._known:
                return
            await asyncio.to_thread(append_tombstone, self.path, uhash)
            self._known.add(uhash)

    async def contains(self, uhash: str) -> bool:
        return uhash in self._known

    def __len__(self) -> int:
        return len(self._known)


class RedisTombstones:
    """Tombstones in one Redis set; those this process recorded or read are also kept in a
    bounded in-process LRU so they hold while Redis is unavailable."""

    def __init__(self, redis: RedisGateway) -> None:
        self.redis = redis
        self._known: OrderedDict[str, None] = OrderedDict()

    def _remember(self, uhash: str) -> None:
        self._known[uhash] = None
        self._known.move_to_end(uhash)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)

    async def add(self, uhash: str) -> None:
        ok, _ = await self.redis.run(lambda r: r.sadd(TOMBSTONES_KEY, uhash))
        if not ok:
            raise DependencyError(
                "cannot reach Redis to record the erasure; nothing was erased, "
                "retry the DELETE when Redis is back",
                dependency="redis",
            )
        self._remember(uhash)

    async def contains(self, uhash: str) -> bool:
        if uhash in self._known:
            return True
        ok, found = await self.redis.run(lambda r: r.sismember(TOMBSTONES_KEY, uhash))
        if not ok:
            return True  # fail closed: unknown while Redis is down
        if found:
            self._remember(uhash)
        return bool(found)
