"""The store's private part: the user-id key and the tombstones of forgotten users.

Layout::

    STORE/.private/                mode 0700, never published or copied into a bundle
      user_key                     32 random bytes (hex), mode 0600: the HMAC key of user ids
      forgotten                    one HMAC user hash a line, appended and fsynced per forget

A user id is only ever stored as ``HMAC-SHA256(user_key, user_id)`` (hex): without the key
the hashes cannot be reversed by trying likely ids. The key comes from the setting
``FUSIONREC_USER_KEY_SECRET`` when given, else from ``user_key``, created on first use
(``O_EXCL``: two processes starting together end up with the same key).

The tombstone file is the embedded default's durable record of ``DELETE /v1/users/{id}``
(the Redis setup keeps its tombstones in the Redis set ``TOMBSTONES_KEY``); training reads
both (:func:`forgotten_users`) to drop forgotten users from the next bundle's data
(:func:`drop_forgotten`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import pandas as pd

from model_store.errors import ConfigError, DependencyError

PRIVATE_DIR = ".private"
USER_KEY_FILE = "user_key"
TOMBSTONES_FILE = "forgotten"
USER_KEY_ENV = "FUSIONREC_USER_KEY_SECRET"
REDIS_URL_ENVS = ("FUSIONREC_REDIS_URL", "REDIS_URL")
TOMBSTONES_KEY = "fusionrec:forgotten"  # the Redis set of the service's tombstones
HASH_LEN = 64  # hex digits of an HMAC-SHA256


def private_dir(store: Path) -> Path:
    path = store / PRIVATE_DIR
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def user_key(store: Path, configured: str | None = None) -> bytes:
    """The HMAC key of user ids: ``configured`` (the setting), else the store's key file,
    created with 32 random bytes (mode 0600) when there is none."""
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
            f"one (stored user data then no longer matches) or set {USER_KEY_ENV}"
        )
    return key.encode()


def user_hash(user_id: str, key: bytes) -> str:
    """The only form in which a user id is stored, logged or published."""
    return hmac.new(key, b"user\0" + user_id.encode(), hashlib.sha256).hexdigest()


def tombstone_path(store: Path) -> Path:
    return private_dir(store) / TOMBSTONES_FILE


def read_tombstones(store: Path) -> set[str]:
    """Every user hash recorded as forgotten in ``store`` (empty when none)."""
    path = store / PRIVATE_DIR / TOMBSTONES_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    # a line cut short by a crash mid-append is not a hash: ignored (its forget never got 204)
    return {line for line in text.split("\n") if len(line) == HASH_LEN}


def append_tombstone(path: Path, uhash: str) -> None:
    """Record one forgotten user durably (written and fsynced before returning)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (uhash + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def redis_tombstones(url: str) -> set[str]:
    """The tombstones the service recorded in Redis (its Redis setup); a batch read of one
    set (``SSCAN`` over that set only), for training — never on a request path."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        found = client.sscan_iter(TOMBSTONES_KEY, count=10_000)
        return {v.decode() if isinstance(v, bytes) else str(v) for v in found}
    except (redis.RedisError, OSError) as exc:
        raise DependencyError(
            f"cannot read the tombstones of forgotten users from Redis ({type(exc).__name__}); "
            "refusing to train on data that may include them",
            dependency="redis",
        ) from exc
    finally:
        client.close()


def forgotten_users(store: Path, redis_url: str | None = None) -> set[str]:
    """Every user hash forgotten on ``store``: its tombstone file, plus the Redis set when
    ``redis_url`` (default: ``FUSIONREC_REDIS_URL`` / ``REDIS_URL``) is set."""
    url = redis_url or next((os.environ[v] for v in REDIS_URL_ENVS if os.environ.get(v)), None)
    found = read_tombstones(store)
    if url:
        found |= redis_tombstones(url)
    return found


def drop_forgotten(
    interactions: pd.DataFrame, forgotten: set[str], key: bytes
) -> tuple[pd.DataFrame, int]:
    """``interactions`` without the rows of forgotten users, and how many users were dropped."""
    if not forgotten or interactions.empty:
        return interactions, 0
    users = pd.Series(interactions["user_id"].astype(str).unique())
    gone = set(users[users.map(lambda u: user_hash(u, key) in forgotten)])
    if not gone:
        return interactions, 0
    kept = interactions[~interactions["user_id"].astype(str).isin(gone)]
    return kept.reset_index(drop=True), len(gone)
