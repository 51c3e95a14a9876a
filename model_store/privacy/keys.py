"""The HMAC key of user ids and the keyed user hash.

Layout of the store's private part::

    STORE/.private/                mode 0700, never published or copied into a bundle
      user_key                     32 random bytes (hex), mode 0600: the HMAC key of user ids
      forgotten                    tombstones (:mod:`model_store.privacy.tombstones`)

A user id is only ever stored as ``HMAC-SHA256(key, user_id)`` (hex): without the key the
hashes cannot be reversed by trying likely ids. The key is the configured secret
(``FUSIONREC_USER_KEY_SECRET``, read by whoever composes the process) when given, else the
store's key file, created on first use (``O_EXCL``: two processes starting together end up
with the same key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from model_store.errors import ConfigError

PRIVATE_DIR = ".private"
USER_KEY_FILE = "user_key"
HASH_LEN = 64  # hex digits of an HMAC-SHA256


def private_dir(store: Path) -> Path:
    path = store / PRIVATE_DIR
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def user_key(store: Path, configured: str | None = None) -> bytes:
    """The HMAC key of user ids: ``configured`` (the secret setting), else the store's key
    file, created with 32 random bytes (mode 0600) when there is none."""
    if configured:
        return configured.encode()
    path = private_dir(store) / USER_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    key = path.read_text().strip()
    if len(key) < 32:
        raise ConfigError(
            f"the user-id key file {path} is empty or too short; delete it to generate a new "
            "one (stored user data then no longer matches) or set FUSIONREC_USER_KEY_SECRET"
        )
    return key.encode()


def user_hash(user_id: str, key: bytes) -> str:
    """The only form in which a user id is stored, logged or published (not reversible
    without ``key``)."""
    return hmac.new(key, b"user\0" + user_id.encode(), hashlib.sha256).hexdigest()


_HASHED = re.compile(r"[0-9a-f]{64}")
V = TypeVar("V")


def keyed_users(rows: Mapping[str, V], key: bytes) -> dict[str, V]:
    """``rows`` keyed by user hash instead of raw user id: what a bundle stores (its
    ``histories.parquet``). A dataset exported from the event log already holds the hashes
    (every id 64 hex digits): those are kept as they are, not hashed twice."""
    if rows and all(_HASHED.fullmatch(u) for u in rows):
        return dict(rows)
    return {user_hash(u, key): v for u, v in rows.items()}
