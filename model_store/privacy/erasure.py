"""The service's one interface to privacy: :class:`Privacy`.

Forgetting a user writes the durable tombstone first (so the bundle's history of the user
is never served again, by any replica, after restarts, and the next training drops the
user), then erases the user from every erasable store it was handed, in order — each one a
fixed set of keys named by the user hash, never a scan. A store that cannot be reached
raises ``DependencyError``: the erasure is recorded and the client retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from model_store.privacy.keys import user_hash
from model_store.privacy.tombstones import Tombstones


class Erasable(Protocol):
    """A store holding data of users by their hash (history, cached vector, event log)."""

    async def erase(self, user_key: str) -> None: ...


class Privacy:
    """Keyed user hashes, tombstones and erasure behind one object.

    ``key`` is the HMAC key of user ids (``keys.user_key``); ``tombstones`` where forgets
    are recorded; ``stores`` every store an erasure must empty, in the order they are
    erased."""

    def __init__(self, *, key: bytes, tombstones: Tombstones, stores: Sequence[Erasable]) -> None:
        self._key = key
        self.tombstones = tombstones
        self.stores = list(stores)

    def user_hash(self, user_id: str) -> str:
        """The only form in which ``user_id`` is stored or logged."""
        return user_hash(user_id, self._key)

    async def forgotten(self, uhash: str) -> bool:
        """Whether the user was forgotten (data predating the forget must not be used)."""
        return await self.tombstones.contains(uhash)

    async def forget(self, user_id: str) -> str:
        """Tombstone first, then every store; returns the user hash. Raises
        ``DependencyError`` when the tombstone or a store cannot be written (nothing is
        erased without the tombstone; a retry finishes what a failed store left)."""
        uhash = self.user_hash(user_id)
        await self.tombstones.add(uhash)
        for store in self.stores:
            await store.erase(uhash)
        return uhash
