"""What training is handed about forgotten users: :class:`Forgotten`.

The composition layer (``fusionrec``: the ``train`` command, retraining) reads the
tombstones through :func:`~model_store.privacy.tombstones.read_forgotten` — with the Redis
URL and user-key secret it was given — and hands training this value; training itself
reads neither Redis nor the environment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from model_store.privacy.keys import user_hash, user_key
from model_store.privacy.tombstones import SetReader, read_forgotten


@dataclass(frozen=True)
class Forgotten:
    """The user hashes of forgotten users and the key that hashes a dataset's raw user ids
    into the same space (an event-log dataset already holds hashes); the bundle's
    histories are keyed by the same hashes."""

    hashes: frozenset[str]
    key: bytes
    # when the tombstones were read (unix seconds): a user forgotten before it is left out
    read_at: float = field(default_factory=time.time)

    @classmethod
    def read(
        cls, store: Path, *, secret: str | None = None, shared: SetReader | None = None
    ) -> Forgotten:
        """The users forgotten on ``store`` (its file, and the shared set when given)."""
        found = read_forgotten(store, shared)
        return cls(frozenset(found), user_key(store, secret))

    def drop(self, interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """``interactions`` without the rows of forgotten users (by raw id or by hash) and
        how many users were dropped."""
        if not self.hashes or interactions.empty:
            return interactions, 0
        users = pd.Series(interactions["user_id"].astype(str).unique())
        gone = set(users[users.map(self._is_forgotten)])
        if not gone:
            return interactions, 0
        kept = interactions[~interactions["user_id"].astype(str).isin(gone)]
        return kept.reset_index(drop=True), len(gone)

    def _is_forgotten(self, user_id: str) -> bool:
        return user_id in self.hashes or user_hash(user_id, self.key) in self.hashes
