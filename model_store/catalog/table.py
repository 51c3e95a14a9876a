"""The catalog as rows: item changes in the store's database, one sequence for the store.

Two tables in the event log's database (:mod:`model_store.database`, SQLite embedded,
PostgreSQL deployed):

* ``fusionrec_catalog_items`` — one row per item changed after the bundles' base catalog:
  its text fields and typed attributes (JSON), ``available``, the text-path vector
  (``text_vec``, float32 bytes, encoded once by the replica that accepted the write), the
  item's ``version`` (1, 2, … per change: the ``ETag``), the change ``seq`` that wrote it
  last and a ``deleted`` flag (a deleted item keeps its row: replicas must hear of it).
* ``fusionrec_catalog_state`` — one row, ``seq``: the head of the store-wide sequence.

A write (:meth:`CatalogStore.write`) is one transaction that first bumps the sequence
(PostgreSQL: ``UPDATE … SET seq = seq + 1 RETURNING seq`` row-locks the state row; SQLite:
``BEGIN IMMEDIATE`` takes the write lock), so concurrent writers on any number of replicas
are serialised by the database and none is lost; it then merges each change onto the row
as it is *in the database* (not as a replica last saw it) and writes it with the new seq.
Replicas apply ``rows_after(seq)`` to their snapshot (``app.core.catalog_apply``). A bundle
built at catalog sequence N (``Manifest.catalog_seq``) holds everything up to N.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from model_store.database import METADATA, Database
from model_store.errors import (
    DependencyError,
    InvalidInputError,
    NotFoundError,
    PreconditionFailedError,
)
from model_store.ids import id_problem

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RETRY_AFTER_S = 2.0
T = TypeVar("T")

items_table = sa.Table(
    "fusionrec_catalog_items",
    METADATA,
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("texts", sa.JSON(), nullable=False),
    sa.Column("attributes", sa.JSON(), nullable=False),
    sa.Column("available", sa.Boolean(), nullable=False),
    sa.Column("text_vec", sa.LargeBinary(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("seq", _SEQ, nullable=False, index=True),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
)

state_table = sa.Table(
    "fusionrec_catalog_state",
    METADATA,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", _SEQ, nullable=False),
)


@dataclass
class ItemRow:
    """An item as the catalog table holds it."""

    item_id: str
    texts: dict[str, str | None]
    attributes: dict[str, object]
    available: bool
    text_vec: np.ndarray | None
    version: int
    seq: int
    deleted: bool


@dataclass
class ItemWrite:
    """One item's change: the fields it sets (``texts``/``attributes``), its text vector
    when its text changed (None: keep the one it has), or a deletion. ``base`` is the item
    as the writer's bundle holds it, used when the table has no row for it yet."""

    item_id: str
    texts: dict[str, str | None] = field(default_factory=dict)
    attributes: dict[str, object] = field(default_factory=dict)
    text_vec: np.ndarray | None = None
    delete: bool = False
    base: ItemRow | None = None
    if_match: int | None = None  # the version the client last saw (If-Match)


def _vec_bytes(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _row(r: sa.RowMapping) -> ItemRow:
    raw = r["text_vec"]
    vec = None if raw is None else np.frombuffer(bytes(raw), dtype="<f4").copy()
    return ItemRow(
        item_id=str(r["item_id"]),
        texts=dict(r["texts"]),
        attributes=dict(r["attributes"]),
        available=bool(r["available"]),
        text_vec=vec,
        version=int(r["version"]),
        seq=int(r["seq"]),
        deleted=bool(r["deleted"]),
    )


def merged(w: ItemWrite, old: ItemRow | None, seq: int) -> ItemRow:
    """The row ``w`` leaves: its fields over the item as the database (else its bundle)
    holds it; NotFoundError for a change of an item that does not exist (or was deleted)
    unless it gives the whole item; PreconditionFailedError for a stale ``if_match``."""
    prior = old if old is not None else w.base
    current = 0 if prior is None or prior.deleted else prior.version
    if w.if_match is not None and w.if_match != current:
        raise PreconditionFailedError(
            f"item {w.item_id!r} is at version {current}, If-Match named {w.if_match}"
        )
    if prior is None or prior.deleted:
        if w.delete or w.text_vec is None:
            raise NotFoundError(f"item {w.item_id!r} is not in the catalog")
        prior = ItemRow(w.item_id, {}, {}, True, None, 0, 0, False)
    attrs = {**prior.attributes, **w.attributes}
    available = attrs.get("available")
    return ItemRow(
        item_id=w.item_id,
        texts={**prior.texts, **w.texts},
        attributes=attrs,
        available=True if available is None else bool(available),
        text_vec=w.text_vec if w.text_vec is not None else prior.text_vec,
        version=(old.version if old is not None else prior.version) + 1,
        seq=seq,
        deleted=w.delete,
    )


class CatalogStore:
    """The catalog tables of one database; every method is blocking (run it off the loop)."""

    def __init__(self, url: str | Database) -> None:
        self.db = url if isinstance(url, Database) else Database(url, what="catalog")
        self.engine = self.db.engine
        self._ready = False

    def create(self) -> None:
        """The tables and the state row (seq 0), idempotent and safe between replicas."""
        if self._ready:
            return
        try:
            self.db.create()
        except sa_exc.OperationalError as exc:  # SQLite: another process created it first
            if "already exists" not in str(exc):
                raise
            self.db.create()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(state_table.c.seq)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(state_table.insert().values(id=1, seq=0))
                except sa_exc.IntegrityError:
                    pass  # another replica inserted it first
        self._ready = True

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        try:
            self.create()
            return fn()
        except sa_exc.SQLAlchemyError as exc:
            if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
                raise
            raise DependencyError(
                f"the catalog database is unavailable ({what}: {type(exc).__name__}); retry later",
                dependency="catalog",
                retry_after_s=RETRY_AFTER_S,
            ) from exc

    def head(self) -> int:
        """The newest change's sequence number (0: none yet)."""

        def read() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.max(state_table.c.seq))).scalar() or 0)

        return self._guard("head", read)

    def rows_after(self, seq: int, upto: int | None = None) -> list[ItemRow]:
        """The rows changed after ``seq`` (up to ``upto``), oldest change first."""

        def read() -> list[ItemRow]:
            q = sa.select(items_table).where(items_table.c.seq > seq)
            if upto is not None:
                q = q.where(items_table.c.seq <= upto)
            with self.engine.connect() as conn:
                return [_row(r) for r in conn.execute(q.order_by(items_table.c.seq)).mappings()]

        return self._guard("read", read)

    def get(self, ids: Sequence[str]) -> dict[str, ItemRow]:
        def read() -> dict[str, ItemRow]:
            q = sa.select(items_table).where(items_table.c.item_id.in_(list(ids)))
            with self.engine.connect() as conn:
                return {str(r["item_id"]): _row(r) for r in conn.execute(q).mappings()}

        return self._guard("read", read)

    def write(self, changes: Sequence[ItemWrite]) -> tuple[int, list[ItemRow]]:
        """Apply ``changes`` in one transaction under a new sequence number; returns it and
        the rows as written. Nothing is written when any change is refused."""
        return self._guard("write", lambda: self._write(changes))

    def _begin(self, conn: sa.Connection) -> int:
        """Start the write transaction and take the next sequence number (the lock)."""
        if self.db.dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        stmt = (
            sa.update(state_table)
            .where(state_table.c.id == 1)
            .values(seq=state_table.c.seq + 1)
            .returning(state_table.c.seq)
        )
        return int(conn.execute(stmt).scalar_one())

    def _write(self, changes: Sequence[ItemWrite]) -> tuple[int, list[ItemRow]]:
        ids = [w.item_id for w in changes]
        for n, item_id in enumerate(ids):  # the one id rule, at the table's door too
            problem = id_problem(item_id)
            if problem is not None:
                raise InvalidInputError(f"items[{n}].item_id {item_id!r}: {problem}")
        with self.engine.connect() as conn:
            try:
                seq = self._begin(conn)
                q = sa.select(items_table).where(items_table.c.item_id.in_(ids))
                old = {str(r["item_id"]): _row(r) for r in conn.execute(q).mappings()}
                rows = [merged(w, old.get(w.item_id), seq) for w in changes]
                now = time.time()
                for row in rows:
                    values = {
                        "texts": row.texts,
                        "attributes": row.attributes,
                        "available": row.available,
                        "text_vec": _vec_bytes(row.text_vec),
                        "version": row.version,
                        "seq": seq,
                        "deleted": row.deleted,
                        "updated_at": now,
                    }
                    if row.item_id in old:
                        conn.execute(
                            items_table.update()
                            .where(items_table.c.item_id == row.item_id)
                            .values(**values)
                        )
                    else:
                        conn.execute(items_table.insert().values(item_id=row.item_id, **values))
                    old[row.item_id] = row  # a later change of the same item builds on it
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return seq, rows
