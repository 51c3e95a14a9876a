"""Server-side histories: the ``HistoryStore`` protocol, in process or in Redis.

While Redis is unavailable an in-process store keeps new events; they are also queued and
written back to Redis, in arrival order, once it answers again (see :class:`RedisHistory`),
so an event that was answered 200 is lost only if this process exits before Redis comes
back. Forgetting a user is the exception: if Redis cannot be reached the erasure raises
``DependencyError``, because silently keeping a user's data is worse than a retry.

Everything is bounded: a history keeps its last ``max_len`` events, at most ``max_user_bytes``
bytes of item ids (the oldest dropped first, the newest always kept), and expires ``ttl_s``
after its last write (Redis ``EXPIRE``; in process on read and by LRU order); the in-process
store has a byte budget (least recently written users evicted first); the queue of events
waiting for Redis holds at most ``max_pending`` users, and an event of one more user is
refused with ``DependencyError`` (503, Retry-After) instead of growing it or dropping an
accepted event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Protocol

from app.keys import history_key
from app.redis_gateway import RedisGateway
from model_store.errors import DependencyError

log = logging.getLogger("app.history")
MAX_LOCAL_USERS = 1_000_000
USER_OVERHEAD = 400  # bytes of a user's dict slot, deque and hash besides the item ids
ITEM_OVERHEAD = 60  # bytes of one str object besides its characters


class HistoryStore(Protocol):
    """Per-user item ids, oldest first, keyed by the user's hash."""

    async def get(self, uhash: str) -> list[str] | None: ...

    async def append(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int: ...

    async def delete(self, uhash: str) -> None: ...


class LocalHistory:
    """Server-side histories in process memory (the embedded default): at most
    ``max_bytes`` (estimated) and ``MAX_LOCAL_USERS`` users, each expiring ``ttl_s`` after
    its last write (0 = never)."""

    def __init__(
        self,
        max_len: int,
        *,
        ttl_s: float = 0,
        max_bytes: int | None = None,
        max_user_bytes: int = 0,
    ) -> None:
        self.max_len = max_len
        self.max_user_bytes = max_user_bytes  # 0 = by count only
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bytes = 0
        # uhash -> (items, monotonic time of the last write, estimated bytes)
        self._data: OrderedDict[str, tuple[deque[str], float, int]] = OrderedDict()

    @staticmethod
    def _cost(uhash: str, items: deque[str]) -> int:
        return USER_OVERHEAD + len(uhash) + sum(len(i) + ITEM_OVERHEAD for i in items)

    async def get(self, uhash: str) -> list[str] | None:
        entry = self._data.get(uhash)
        if entry is None:
            return None
        if self.ttl_s and time.monotonic() - entry[1] > self.ttl_s:
            self._pop(uhash)
            return None
        return list(entry[0])

    async def append(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int:
        entry = self._data.get(uhash)
        if entry is not None and self.ttl_s and time.monotonic() - entry[1] > self.ttl_s:
            self._pop(uhash)
            entry = None
        stored = deque(seed, maxlen=self.max_len) if entry is None else entry[0]
        self._pop(uhash)
        stored.extend(items)
        if self.max_user_bytes:
            size = sum(len(i.encode()) for i in stored)
            while size > self.max_user_bytes and len(stored) > 1:
                size -= len(stored.popleft().encode())
        cost = self._cost(uhash, stored)
        self._data[uhash] = (stored, time.monotonic(), cost)
        self.bytes += cost
        while len(self._data) > 1 and (
            len(self._data) > MAX_LOCAL_USERS
            or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            self._pop(next(iter(self._data)))
        return len(stored)

    def _pop(self, uhash: str) -> None:
        entry = self._data.pop(uhash, None)
        if entry is not None:
            self.bytes -= entry[2]

    async def delete(self, uhash: str) -> None:
        self._pop(uhash)

    def __len__(self) -> int:
        return len(self._data)


# KEYS[1] = history list; ARGV = max_len, ttl_s (0 = none), max_user_bytes (0 = none),
# n_seed, seed..., new items...; trimmed by count, then by bytes (oldest first, the newest
# item always kept)
_APPEND_LUA = """
local n_seed = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 and n_seed > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 5, 4 + n_seed))
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 5 + n_seed, #ARGV))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
local cap = tonumber(ARGV[3])
if cap > 0 then
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  local total = 0
  for i = 1, #items do total = total + #items[i] end
  local drop = 0
  while total > cap and drop < #items - 1 do
    drop = drop + 1
    total = total - #items[drop]
  end
  if drop > 0 then redis.call('LTRIM', KEYS[1], drop, -1) end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
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

    def __init__(
        self,
        redis: RedisGateway,
        fallback: LocalHistory,
        max_len: int,
        *,
        ttl_s: int = 0,
        max_pending: int = MAX_LOCAL_USERS,
        retry_after_s: float = 5.0,
    ) -> None:
        self.redis = redis
        self.fallback = fallback
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self._append: Any = redis.client.register_script(_APPEND_LUA)
        # uhash -> (seed, events accepted while Redis was down, oldest first)
        self._pending: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
        self._replay_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None

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
        args = [self.max_len, self.ttl_s, self.fallback.max_user_bytes, len(seed), *seed, *items]
        ok, n = await self.redis.run(lambda r: self._append(keys=[key], args=args, client=r))
        return ok, int(n or 0)

    async def _queue(self, uhash: str, items: Sequence[str], seed: Sequence[str]) -> int:
        entry = self._pending.get(uhash)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                raise DependencyError(
                    f"Redis is unavailable and events of {len(self._pending)} users are "
                    "already waiting to be written back (FUSIONREC_HISTORY_MAX_PENDING_USERS); "
                    "this event was not accepted, retry later",
                    dependency="redis",
                    retry_after_s=self.retry_after_s,
                )
            self._pending[uhash] = (list(seed)[-self.max_len :], list(items))
        else:
            entry[1].extend(items)
            del entry[1][: -self.max_len]
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
        """Erase the user's history: one ``DEL`` of a known key (no keyspace scan)."""
        self._pending.pop(uhash, None)
        await self.fallback.delete(uhash)
        key = history_key(uhash)
        ok, _ = await self.redis.run(lambda r: r.delete(key))
        if not ok:
            raise DependencyError(
                "cannot reach Redis to erase the user's data; nothing was kept "
                "in this process, retry the DELETE when Redis is back",
                dependency="redis",
            )

    @property
    def pending_users(self) -> int:
        return len(self._pending)
