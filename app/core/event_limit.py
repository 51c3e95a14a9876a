"""The per-user event rate limit, one of the guards against shilling (fake shoppers
pushing an item): however many API keys or addresses post them, one user's events are
accepted at most ``per_minute`` a minute (a token bucket of that capacity, refilled
continuously), per replica. Users are counted by their keyed hash, in a bounded LRU."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from app.errors import ApiError

MAX_USERS = 100_000
SETTING = "FUSIONREC_USER_EVENTS_PER_MINUTE"


class UserEventLimit:
    """Token buckets per user hash: ``per_minute`` capacity and refill a minute; 0 = off."""

    def __init__(self, per_minute: int, *, max_users: int = MAX_USERS) -> None:
        self.per_minute = per_minute
        self.max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, uhash: str) -> float | None:
        """None when the user may post one more event now, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        now = time.monotonic()
        tokens, last = self._buckets.get(uhash, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[uhash] = (tokens, now)
        self._buckets.move_to_end(uhash)
        if len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / rate

    def message(self, wait: float) -> str:
        return (
            f"too many events for this user: at most {self.per_minute} a minute "
            f"({SETTING}); retry after {wait:.1f} s"
        )

    def check(self, uhash: str) -> None:
        """A 429 with Retry-After when the user's events are over the limit."""
        wait = self.take(uhash)
        if wait is not None:
            raise ApiError(
                429,
                "user_rate_limited",
                self.message(wait),
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
