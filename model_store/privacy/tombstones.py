"""Tombstones of forgotten users: recorded durably before an erasure is acknowledged and
checked before a bundle's training history is used for a user.

* :class:`FileTombstones` (the embedded default): the store's append-only file
  ``STORE/.private/forgotten``, one user hash a line, fsynced per forget, read back at start.
* :class:`RedisTombstones`: one Redis set (:data:`TOMBSTONES_KEY`) shared by every replica,
  reached through the :class:`SharedSets` object it is handed (the service's gateway, with
  its timeout and circuit breaker). While the set cannot be reached a user this process has
  not seen forgotten is treated as forgotten (fail closed: served like a new user), because
  a replica cannot know whether another one forgot the user meanwhile.

Training reads both through :func:`read_forgotten` (a :class:`SetReader` for the Redis
set). A tombstone only suppresses data that predates the forget (the bundle's history, the
next bundle's training data); events sent after it start a new history.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from model_store.errors import DependencyError
from model_store.privacy.keys import HASH_LEN, PRIVATE_DIR, private_dir

TOMBSTONES_FILE = "forgotten"
TOMBSTONES_KEY = "fusionrec:forgotten"  # the Redis set of the service's tombstones
MAX_KNOWN = 100_000  # Redis setup: forgotten users remembered in process (an LRU)


class Tombstones(Protocol):
    """Where forgets are recorded; ``add`` raises ``DependencyError`` when it cannot."""

    async def add(self, uhash: str) -> None: ...

    async def contains(self, uhash: str) -> bool: ...


class SharedSets(Protocol):
    """Set operations on a shared store that never raise: ``set_add`` answers False and
    ``set_contains`` None when the store cannot be reached."""

    async def set_add(self, key: str, member: str) -> bool: ...

    async def set_contains(self, key: str, member: str) -> bool | None: ...


class SetReader(Protocol):
    """A batch read of a whole shared set, for training; raises ``DependencyError`` when
    the set cannot be read."""

    def set_members(self, key: str) -> set[str]: ...


def tombstone_path(store: Path) -> Path:
    return private_dir(store) / TOMBSTONES_FILE


def read_tombstones(store: Path) -> set[str]:
    """Every user hash recorded as forgotten in ``store``'s file (empty when none)."""
    path = store / PRIVATE_DIR / TOMBSTONES_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    # a line cut short by a crash mid-append is not a hash: ignored (its forget never got 204)
    return {line for line in text.split("\n") if len(line) == HASH_LEN}


def append_tombstone(path: Path, uhash: str) -> None:
    """Record one forgotten user durably (written and fsynced before returning)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (uhash + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_forgotten(store: Path, shared: SetReader | None = None) -> set[str]:
    """Every user hash forgotten on ``store``: its tombstone file, plus the shared set
    (the service's Redis setup) when ``shared`` is given."""
    found = read_tombstones(store)
    if shared is not None:
        found |= shared.set_members(TOMBSTONES_KEY)
    return found


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
    """Tombstones in one shared set; those this process recorded or read are also kept in a
    bounded in-process LRU so they hold while the set is unavailable."""

    def __init__(self, sets: SharedSets) -> None:
        self.sets = sets
        self._known: OrderedDict[str, None] = OrderedDict()

    def _remember(self, uhash: str) -> None:
        self._known[uhash] = None
        self._known.move_to_end(uhash)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)

    async def add(self, uhash: str) -> None:
        if not await self.sets.set_add(TOMBSTONES_KEY, uhash):
            raise DependencyError(
                "cannot reach Redis to record the erasure; nothing was erased, "
                "retry the DELETE when Redis is back",
                dependency="redis",
            )
        self._remember(uhash)

    async def contains(self, uhash: str) -> bool:
        if uhash in self._known:
            return True
        found = await self.sets.set_contains(TOMBSTONES_KEY, uhash)
        if found is None:
            return True  # fail closed: unknown while Redis is down
        if found:
            self._remember(uhash)
        return found
