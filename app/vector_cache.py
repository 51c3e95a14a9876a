"""The user-vector cache: Redis first when configured, a bounded in-process LRU otherwise
(and while Redis is unavailable). Vectors are float32 bytes under ``keys.vector_key`` /
``keys.user_vector_key``, each value prefixed with its tag (the model version) and a
newline: a user has one key whatever the version, and a value of another version is a miss.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from app.redis_gateway import RedisGateway

ENTRY_OVERHEAD = 160  # bytes of dict slot, tuple, key and value objects besides their data


class LocalLRU:
    """A bounded in-process cache with per-entry expiry (event-loop only, no locking):
    at most ``size`` entries and ``max_bytes`` bytes, least recently used evicted first."""

    def __init__(self, size: int, ttl_s: float, max_bytes: int | None = None) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def get(self, key: str) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires < time.monotonic():
            self._pop(key)
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: bytes) -> None:
        self._pop(key)
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self.bytes += self._cost(key, value)
        budget = self.max_bytes
        while self._data and (
            len(self._data) > self.size or (budget is not None and self.bytes > budget)
        ):
            self._pop(next(iter(self._data)))

    def _pop(self, key: str) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= self._cost(key, old[1])

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._pop(key)

    def __len__(self) -> int:
        return len(self._data)


def _tagged(tag: str, raw: bytes) -> bytes:
    return tag.encode() + b"\n" + raw


def _untag(tag: str, value: bytes) -> bytes | None:
    head, sep, raw = value.partition(b"\n")
    return raw if sep and head == tag.encode() else None


class VectorCache:
    """User vectors as float32 bytes; Redis first when configured, the local LRU otherwise."""

    def __init__(self, local: LocalLRU, redis: RedisGateway | None, ttl_s: int) -> None:
        self.local = local
        self.redis = redis
        self.ttl_s = ttl_s

    async def get(self, key: str, *, tag: str = "") -> np.ndarray | None:
        raw: bytes | str | None = None
        if self.redis is not None:
            ok, value = await self.redis.run(lambda r: r.get(key))
            raw = value if ok else self.local.get(key)
        else:
            raw = self.local.get(key)
        if raw is None or isinstance(raw, str):
            return None
        data = _untag(tag, raw)
        return None if data is None else np.frombuffer(data, dtype=np.float32)

    async def set(self, key: str, vector: np.ndarray, *, tag: str = "") -> None:
        raw = _tagged(tag, np.ascontiguousarray(vector, dtype=np.float32).tobytes())
        if self.redis is not None:
            ok, _ = await self.redis.run(lambda r: r.set(key, raw, ex=self.ttl_s))
            if ok:
                return
        self.local.set(key, raw)

    async def delete(self, keys: Sequence[str]) -> bool:
        """Delete ``keys`` here and in Redis; False when Redis could not be reached."""
        self.local.delete(keys)
        if self.redis is not None and keys:
            ok, _ = await self.redis.run(lambda r: r.delete(*keys))
            return ok
        return True
