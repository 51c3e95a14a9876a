"""The store's database: one SQLAlchemy Core engine for the event log and the catalog.

SQLite is the embedded default (a file in the store), PostgreSQL the deployed one; every
table is declared on :data:`METADATA` and created on first use, and every statement goes
through SQLAlchemy Core so the two databases share one code path.

Errors are sorted into two kinds, because a writer must treat them differently:

* **transient** — the database is unreachable, restarting, or timed out
  (``OperationalError``, ``InterfaceError``, a pool timeout). Retrying later succeeds: keep
  the work (spool it) and retry.
* **permanent** — the statement itself is wrong for this database (``IntegrityError``,
  ``DataError``, ``ProgrammingError``: a constraint, a value the column cannot hold). Retrying
  can never succeed: never spool it; reject or quarantine it and move on.

:func:`redact` masks the password of any URL shape operators write (including ``/`` and
``@`` inside an unencoded password), so no message or log line ever echoes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from model_store.errors import ConfigError

Dialect = Literal["sqlite", "postgresql"]
METADATA = sa.MetaData()
# scheme://[user[:password]@]rest — the userinfo runs to the LAST "@" before the path's
# first "/" after it, so an unencoded "/" or "@" in a password is still masked
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s]*@)(?P<rest>[^@\s]*)")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it
    replaced by ``***`` (the user name is kept: it helps and is not a secret)."""

    def mask(m: re.Match[str]) -> str:
        userinfo = m.group("userinfo")[:-1]
        user, sep, _ = userinfo.partition(":")
        return f"{m.group('scheme')}{user}{':***' if sep else ''}@{m.group('rest')}"

    return _URL.sub(mask, text)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying the same statement can never succeed (see the module docstring)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return False
    return isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError)


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an answered write survives power loss
    cursor.close()


class Database:
    """An engine for ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://…``) whose
    tables (:data:`METADATA`) are created on first use."""

    def __init__(self, url: str, *, what: str = "database") -> None:
        if url.startswith("postgres://"):  # PostgreSQL's own short scheme (libpq, Heroku)
            url = "postgresql" + url.removeprefix("postgres")
        self.url = url
        try:
            sa_url = sa.engine.make_url(url)
        except Exception as e:  # SQLAlchemy raises several kinds here
            raise ConfigError(
                f"{what} URL {redact(url)!r} is not a database URL "
                "(sqlite:///path/events.db or postgresql+psycopg://user@host/db)"
            ) from e
        backend = sa_url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"{what} URL {redact(url)!r}: only sqlite and postgresql are supported"
            )
        if backend == "postgresql" and sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")  # the driver we install
        self.dialect: Dialect = "sqlite" if backend == "sqlite" else "postgresql"
        kwargs: dict[str, object] = {"pool_pre_ping": True}
        if self.dialect == "sqlite":
            if sa_url.database and sa_url.database != ":memory:":
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["connect_args"] = {"connect_timeout": 3}
            kwargs["pool_timeout"] = 3
        self.engine: Engine = sa.create_engine(sa_url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._created = False

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    def create(self) -> None:
        """Create the tables that do not exist yet (idempotent, safe between replicas)."""
        if self._created:
            return
        try:
            METADATA.create_all(self.engine, checkfirst=True)
        except (sa_exc.ProgrammingError, sa_exc.IntegrityError):
            # another replica created the same table between our check and our CREATE
            METADATA.create_all(self.engine, checkfirst=True)
        self._created = True

    def close(self) -> None:
        self.engine.dispose()
