"""The user-vector cache: Redis first when configured, a bounded in-process LRU otherwise
(and while Redis is unavailable). Vectors are float32 bytes under ``keys.vector_key``."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from app.redis_gateway import RedisGateway


class LocalLRU:
    """A bounded in-process cache with per-entry expiry (event-loop only, no locking)."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: bytes) -> None:
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def delete_matching(self, fragment: str) -> None:
        for key in [k for k in self._data if fragment in k]:
            del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class VectorCache:
    """User vectors as float32 bytes; Redis first when configured, the local LRU otherwise."""

    def __init__(self, local: LocalLRU, redis: RedisGateway | None, ttl_s: int) -> None:
        self.local = local
        self.redis = redis
        self.ttl_s = ttl_s

    async def get(self, key: str) -> np.ndarray | None:
        raw: bytes | str | None = None
        if self.redis is not None:
            ok, value = await self.redis.run(lambda r: r.get(key))
            raw = value if ok else self.local.get(key)
        else:
            raw = self.local.get(key)
        if raw is None or isinstance(raw, str):
            return None
        return np.frombuffer(raw, dtype=np.float32)

    async def set(self, key: str, vector: np.ndarray) -> None:
        raw = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        if self.redis is not None:
            ok, _ = await self.redis.run(lambda r: r.set(key, raw, ex=self.ttl_s))
            if ok:
                return
        self.local.set(key, raw)

    async def delete(self, keys: Sequence[str]) -> None:
        self.local.delete(keys)
        if self.redis is not None and keys:
            await self.redis.run(lambda r: r.delete(*keys))
