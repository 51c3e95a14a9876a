"""Redis key names and the hashing of user ids (the only form in which one is stored).

fusionrec:uv:{model_version}:u:{sha256(user_id)}     float32 bytes of a user vector, TTL
fusionrec:uv:{model_version}:h:{sha256(history)}     same, for an explicit history
fusionrec:hist:{sha256(user_id)}                     Redis list of item ids, oldest first
fusionrec:hist:{sha256(user_id)}:neg                 items with negative feedback (dislike)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

PREFIX = "fusionrec:"


def user_hash(user_id: str) -> str:
    """The only form in which a user id is stored or logged."""
    return hashlib.sha256(b"user\0" + user_id.encode()).hexdigest()


def history_hash(item_ids: Sequence[str]) -> str:
    h = hashlib.sha256(b"history\0")
    for item in item_ids:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()


def vector_key(version: str, *, user: str | None = None, history: Sequence[str] = ()) -> str:
    if user is not None:
        return f"{PREFIX}uv:{version}:u:{user_hash(user)}"
    return f"{PREFIX}uv:{version}:h:{history_hash(history)}"


def history_key(uhash: str) -> str:
    return f"{PREFIX}hist:{uhash}"


def negative_key(uhash: str) -> str:
    """The history-store key of a user's negative feedback (items hidden from them)."""
    return f"{uhash}:neg"
