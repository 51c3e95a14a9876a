"""Privacy: keyed user hashes, tombstones of forgotten users, erasure — one room.

* :mod:`.keys` — the HMAC key of user ids (configured, or kept in the store) and the
  keyed hash, the only form in which a user id is stored, logged or published.
* :mod:`.tombstones` — the durable record of each forget: the store's file, or a Redis
  set shared by every replica (reached through a client object the caller hands in; this
  package never reads the environment or opens a connection).
* :mod:`.erasure` — :class:`~.erasure.Privacy`, the service's one interface: hash an id,
  check a tombstone, forget a user (tombstone first, then every erasable store).
* :mod:`.forgotten` — what training is handed: the set of forgotten users and the key that
  matches a dataset's raw ids against it.
"""

from model_store.privacy.erasure import Erasable, Privacy
from model_store.privacy.forgotten import Forgotten
from model_store.privacy.keys import keyed_users, user_hash, user_key
from model_store.privacy.tombstones import FileTombstones, RedisTombstones, Tombstones

__all__ = [
    "Erasable",
    "FileTombstones",
    "Forgotten",
    "Privacy",
    "RedisTombstones",
    "Tombstones",
    "keyed_users",
    "user_hash",
    "user_key",
]
