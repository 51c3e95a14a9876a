"""User-vector cache and server-side history store: Redis when configured, else in-process.

Keys (user ids never appear in clear; they are sha256-hashed):

    fusionrec:uv:{model_version}:u:{sha256(user_id)}     float32 bytes of a user vector, TTL
    fusionrec:uv:{model_version}:h:{sha256(history)}     same, for an explicit history
    fusionrec:hist:{sha256(user_id)}                     Redis list of item ids, oldest first

Redis is optional and never on the failure path: every call has a hard timeout
(``FUSIONREC_REDIS_TIMEOUT_S``), no retries, and goes through a circuit breaker that stops
calling Redis for ``FUSIONREC_BREAKER_RESET_S`` after ``FUSIONREC_BREAKER_FAILURES``
consecutive errors. While Redis is unavailable the in-process LRU serves as the cache and
an in-process store keeps new events; they are also queued and written back to Redis, in
arrival order, once it answers again (see :class:`RedisHistory`), so an event that was
answered 200 is lost only if this process exits before Redis comes back.
Forgetting a user is the exception: if Redis cannot be reached the DELETE answers 503,
because silently keeping a user's data is worse than a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.errors import ApiError

log = logging.getLogger("app.cache")
T = TypeVar("T")
PREFIX = "fusionrec:"
MAX_LOCAL_USERS = 1_000_000


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


class CircuitBreaker:
    """closed → (``failures`` consecutive errors) → open → (``reset_s``) → half-open probe."""

    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._errors = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self._opened_at is None:
            return "closed"
        if self._probing or self.clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self.clock() - self._opened_at < self.reset_s:
            return False
        self._probing = True  # exactly one probe at a time while half-open
        return True

    def success(self) -> None:
        self._errors = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._errors += 1
        self._probing = False
        if self._opened_at is not None or self._errors >= self.failures:
            self._opened_at = self.clock()


class RedisGateway:
    """One ``redis.asyncio`` client behind a hard timeout and a circuit breaker."""

    def __init__(self, url: str, *, timeout_s: float, breaker: CircuitBreaker) -> None:
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=256,
        )
        self.errors = 0

    async def run(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> tuple[bool, T | None]:
        """(True, result) or (False, None) when Redis is unavailable; never raises."""
        if not self.breaker.allow():
            return False, None
        try:
            result = await asyncio.wait_for(
                op(self.client), timeout=timeout_s or self.timeout_s * 2
            )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            if self.breaker.state == "closed":
                log.warning("redis unavailable (%s); serving without it", type(exc).__name__)
            self.breaker.failure()
            return False, None
        self.breaker.success()
        return True, result

    async def ping(self) -> bool:
        ok, _ = await self.run(lambda r: r.ping())
        return ok

    async def close(self) -> None:
        await self.client.aclose()


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


class LocalHistory:
    """Server-side histories in process memory (the embedded default)."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self._data: OrderedDict[str, deque[str]] = OrderedDict()

    async def get(self, uhash: str) -> list[str] | None:
        items = self._data.get(uhash)
        return None if items is None else list(items)

    async def append(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int:
        stored = self._data.get(uhash)
        if stored is None:
            stored = self._data[uhash] = deque(seed, maxlen=self.max_len)
        stored.extend(items)
        self._data.move_to_end(uhash)
        while len(self._data) > MAX_LOCAL_USERS:
            self._data.popitem(last=False)
        return len(stored)

    async def delete(self, uhash: str) -> None:
        self._data.pop(uhash, None)


# KEYS[1] = history list; ARGV = max_len, n_seed, seed..., new items...
_APPEND_LUA = """
local n_seed = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 and n_seed > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 3, 2 + n_seed))
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3 + n_seed, #ARGV))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
return redis.call('LLEN', KEYS[1])
"""


class RedisHistory:
    """Histories as Redis lists, seeded from the bundle on a user's first event.

    Events accepted while Redis is unavailable go to the in-process ``fallback`` (which
    answers reads meanwhile) and to a queue of pending writes. Once Redis answers again the
    queue is written back, oldest user first, with the same append script (so a list that
    survived the outage gets the missed events appended, and a restarted empty Redis gets
    seed + events): for one user before that user's next read or write, for everyone by a
    background flush started after any successful Redis call.
    """

    def __init__(self, redis: RedisGateway, fallback: LocalHistory, max_len: int) -> None:
        self.redis = redis
        self.fallback = fallback
        self.max_len = max_len
        self._append: Any = redis.client.register_script(_APPEND_LUA)
        # uhash -> (seed, events accepted while Redis was down, oldest first)
        self._pending: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
        self._replay_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None

    @property
    def pending_users(self) -> int:
        return len(self._pending)

    async def get(self, uhash: str) -> list[str] | None:
        if uhash in self._pending:
            async with self._replay_lock:
                await self._replay(uhash)
        key = history_key(uhash)
        ok, items = await self.redis.run(lambda r: r.lrange(key, 0, -1))
        if ok:
            self._kick()
        if ok and items:
            return [i.decode() if isinstance(i, bytes) else str(i) for i in items]
        local = await self.fallback.get(uhash)
        return local if local is not None or not ok else None

    async def append(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int:
        if uhash in self._pending:
            async with self._replay_lock:
                if not await self._replay(uhash):  # still down: queue behind the others
                    return await self._queue(uhash, items, seed)
        ok, n = await self._write(uhash, items, seed)
        if ok:
            self._kick()
            return n
        return await self._queue(uhash, items, seed)

    async def _write(
        self, uhash: str, items: Sequence[str], seed: Sequence[str]
    ) -> tuple[bool, int]:
        key = history_key(uhash)
        seed = list(seed)[-self.max_len :]
        args = [self.max_len, len(seed), *seed, *items]
        ok, n = await self.redis.run(lambda r: self._append(keys=[key], args=args, client=r))
        return ok, int(n or 0)

    async def _queue(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int:
        entry = self._pending.get(uhash)
        if entry is None:
            self._pending[uhash] = (list(seed)[-self.max_len :], list(items))
        else:
            entry[1].extend(items)
            del entry[1][: -self.max_len]
        while len(self._pending) > MAX_LOCAL_USERS:
            self._pending.popitem(last=False)
            log.warning("too many users with events pending for Redis; dropped the oldest")
        return await self.fallback.append(uhash, items, seed)

    async def _replay(self, uhash: str) -> bool:
        """Write one user's pending events to Redis (caller holds the lock); False if down."""
        entry = self._pending.pop(uhash, None)
        if entry is None:
            return True
        ok, _ = await self._write(uhash, entry[1], entry[0])
        if not ok:
            self._pending[uhash] = entry
            self._pending.move_to_end(uhash, last=False)
            return False
        await self.fallback.delete(uhash)  # Redis has it all again
        return True

    def _kick(self) -> None:
        if self._pending and (self._flush_task is None or self._flush_task.done()):
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            async with self._replay_lock:
                if not self._pending:
                    return
                if not await self._replay(next(iter(self._pending))):
                    return  # down again; the next successful call restarts the flush
        log.info("events accepted during the Redis outage are written back")

    async def drain(self, timeout_s: float) -> int:
        """At shutdown: keep writing pending events back until none are left or ``timeout_s``
        has passed (waiting out an open breaker); return how many users are still pending.

        Without it, events accepted while Redis blinked (a timeout under load is enough)
        would live only in this process and vanish with it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._pending and loop.time() < deadline:
            await self._flush()  # returns when done or when Redis refuses again
            if self._pending:
                await asyncio.sleep(0.05)  # let the breaker move to half-open
        if self._pending:
            log.error(
                "shutdown: events of %d user(s) could not be written back to Redis "
                "within %.1f s and are lost",
                len(self._pending),
                timeout_s,
            )
        return len(self._pending)

    async def delete(self, uhash: str) -> None:
        self._pending.pop(uhash, None)
        await self.fallback.delete(uhash)

        async def erase(r: aioredis.Redis) -> int:
            keys = [k async for k in r.scan_iter(match=f"{PREFIX}*{uhash}*", count=1000)]
            return int(await r.delete(history_key(uhash), *keys))

        # scanning may take longer than one cache call; still bounded
        ok, _ = await self.redis.run(erase, timeout_s=max(2.0, self.redis.timeout_s * 20))
        if not ok:
            raise ApiError(
                503,
                "redis_unavailable",
                "cannot reach Redis to erase the user's data; nothing was kept "
                "in this process, retry the DELETE when Redis is back",
                headers={"Retry-After": "5"},
            )


HistoryStore = LocalHistory | RedisHistory
