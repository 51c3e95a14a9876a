"""The forgotten users handed to training, read with what the command was given.

Training never reads Redis or the environment: the ``train`` and ``retrain`` commands take
the Redis URL and the user-key secret as options (which typer also fills from the service's
variables, ``FUSIONREC_REDIS_URL`` / ``REDIS_URL`` and ``FUSIONREC_USER_KEY_SECRET``), read
the tombstones through ``model_store.privacy`` and pass the result on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model_store.errors import DependencyError
from model_store.privacy.forgotten import Forgotten

RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        envvar=["FUSIONREC_REDIS_URL", "REDIS_URL"],
        show_default=False,
        help="the service's Redis (redis://host:port/db): its tombstones of forgotten users "
        "are dropped from the training data too",
    ),
]
UserKeySecretOption = Annotated[
    str | None,
    typer.Option(
        envvar="FUSIONREC_USER_KEY_SECRET",
        show_default=False,
        help="the service's HMAC key of user ids, when it is configured rather than kept "
        "in the store",
    ),
]


class RedisSetReader:
    """Reads one whole Redis set (``SSCAN`` over that set only) with a client of its own:
    a batch read for training, never on a request path."""

    def __init__(self, url: str) -> None:
        self.url = url

    def set_members(self, key: str) -> set[str]:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
        try:
            found = client.sscan_iter(key, count=10_000)
            return {v.decode() if isinstance(v, bytes) else str(v) for v in found}
        except (redis.RedisError, OSError) as exc:
            raise DependencyError(
                "cannot read the tombstones of forgotten users from Redis "
                f"({type(exc).__name__}); refusing to train on data that may include them",
                dependency="redis",
            ) from exc
        finally:
            client.close()


def forgotten_users(
    store: Path, *, redis_url: str | None, user_key_secret: str | None
) -> Forgotten:
    """The users forgotten on ``store``: its tombstone file, and the Redis set of the
    service's Redis setup when ``redis_url`` is given."""
    shared = RedisSetReader(redis_url) if redis_url else None
    return Forgotten.read(store, secret=user_key_secret or None, shared=shared)
