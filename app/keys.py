"""Key names of the service's per-user data in Redis and the vector cache.

fusionrec:uv:u:{uhash}                    version, newline, float32 bytes of a user vector; TTL
fusionrec:uv:{version}:h:{sha256(history)}  the same, for an explicit history
fusionrec:hist:{uhash}                    Redis list of item ids, oldest first; TTL
fusionrec:hist:{uhash}:neg                items with negative feedback (dislike); TTL
fusionrec:forgotten                       Redis set of forgotten users (model_store.privacy)

``uhash`` is the keyed user hash (``model_store.privacy.keys.user_hash``). Every key that
holds a user's data is named by the uhash alone, so erasing a user deletes a fixed set of
keys (:func:`user_keys`) and never scans the keyspace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

PREFIX = "fusionrec:"


def history_hash(item_ids: Sequence[str]) -> str:
    h = hashlib.sha256(b"history\0")
    for item in item_ids:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()


def vector_key(version: str, *, history: Sequence[str]) -> str:
    """The cache key of the vector of an explicit history (no user in it)."""
    return f"{PREFIX}uv:{version}:h:{history_hash(history)}"


def user_vector_key(uhash: str) -> str:
    """The cache key of a user's vector: one per user, its value tagged with the version."""
    return f"{PREFIX}uv:u:{uhash}"


def history_key(uhash: str) -> str:
    return f"{PREFIX}hist:{uhash}"


def negative_key(uhash: str) -> str:
    """The history-store key of a user's negative feedback (items hidden from them)."""
    return f"{uhash}:neg"


def user_keys(uhash: str) -> list[str]:
    """Every Redis key that holds data of the user (what an erasure deletes)."""
    return [history_key(uhash), history_key(negative_key(uhash)), user_vector_key(uhash)]
