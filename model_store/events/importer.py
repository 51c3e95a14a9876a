"""``fusionrec events import``: a dataset directory's interactions into the event log.

Each interaction becomes one event of type ``view`` with the dataset's weight (1 without a
``weight`` column; an exported log carries each type's weight there), its timestamp as
float unix seconds, and an ``event_id`` derived from (user key, item, timestamp, type):
importing the same directory twice stores every event once. User ids are stored as the
service stores them: the keyed hash passed in as ``hash_user`` (the store's user key,
:mod:`model_store.privacy.keys`), so the imported history and the live events of a
shopper are one user in the log.

Written in bulk: ``executemany`` of ``INSERT OR IGNORE`` on SQLite, ``COPY`` into a
temporary table then one ``INSERT … ON CONFLICT DO NOTHING`` on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.data.dataset import load_dataset
from model_store.errors import DataError
from model_store.events.log import DEFAULT_TYPE, EventStore, events_table
from model_store.ids import id_problem

CHUNK = 100_000
_COLUMNS = (
    "event_id", "user_key", "item_id", "type", "weight", "value", "timestamp", "received",
    "request_id",
)  # fmt: skip
Row = tuple[str, str, str, str, float, float | None, float, float, str | None]


@dataclass(frozen=True)
class Imported:
    rows: int  # interactions of the dataset imported (forgotten users' left out)
    new: int  # events stored now (the others were already in the log)
    seconds: float


def import_id(user_key: str, item_id: str, timestamp: float, type_: str) -> str:
    """The deterministic event id of an imported interaction (64 hex digits; live events
    have 32, so the two never collide)."""
    text = f"{user_key}\0{item_id}\0{float(timestamp)!r}\0{type_}"
    return hashlib.sha256(text.encode()).hexdigest()


def _check_ids(values: pd.Series, path: Path, field: str) -> None:
    for value in pd.unique(values.to_numpy()):
        problem = id_problem(value)
        if problem is not None:
            row = int(np.flatnonzero((values == value).to_numpy())[0])
            raise DataError(f"{path}: row {row + 1}, field {field!r}: id {problem}")


def dataset_rows(
    path: Path, hash_user: Callable[[str], str], forgotten: Collection[str] = ()
) -> list[Row]:
    """The dataset's interactions as event-log rows (validated as ``load_dataset`` does);
    users whose hash is in ``forgotten`` (erased shoppers) are left out."""
    data = load_dataset(path)
    inter = data.interactions
    source = data.source / "interactions"
    _check_ids(inter["user_id"], source, "user_id")
    _check_ids(inter["item_id"], source, "item_id")
    keys = {u: hash_user(u) for u in pd.unique(inter["user_id"].to_numpy())}
    now = time.time()
    rows: list[Row] = []
    type_ = DEFAULT_TYPE
    for user, item, ts, weight in zip(
        inter["user_id"].tolist(),
        inter["item_id"].tolist(),
        inter["timestamp"].astype(float).tolist(),
        inter["weight"].astype(float).tolist(),
        strict=True,
    ):
        key = keys[user]
        if key in forgotten:
            continue
        rows.append(
            (import_id(key, item, ts, type_), key, item, type_, weight, None, ts, now, None)
        )
    return rows


def _chunks(rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _sqlite(store: EventStore, rows: Sequence[Row]) -> int:
    cols = ", ".join(_COLUMNS)
    sql = (
        f"INSERT OR IGNORE INTO {events_table.name} ({cols}) "
        f"VALUES ({', '.join('?' * len(_COLUMNS))})"
    )
    new = 0
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        for chunk in _chunks(rows):
            before = raw.total_changes
            cur.executemany(sql, chunk)
            raw.commit()
            new += raw.total_changes - before
    finally:
        raw.close()
    return new


def _postgres(store: EventStore, rows: Sequence[Row]) -> int:
    quoted = ", ".join(f'"{c}"' for c in _COLUMNS)
    new = 0
    raw = store.engine.raw_connection()
    try:
        conn: Any = raw.driver_connection  # psycopg 3
        for chunk in _chunks(rows):
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE fusionrec_import (event_id text, user_key text, "
                    "item_id text, type text, weight float8, value float8, "
                    '"timestamp" float8, received float8, request_id text) ON COMMIT DROP'
                )
                with cur.copy(f"COPY fusionrec_import ({quoted}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO {events_table.name} ({quoted}) SELECT {quoted} "
                    "FROM fusionrec_import ON CONFLICT (event_id) DO NOTHING"
                )
                new += max(0, cur.rowcount)
            conn.commit()
    finally:
        raw.close()
    return new


def import_dataset(
    store: EventStore,
    path: Path,
    hash_user: Callable[[str], str],
    forgotten: Collection[str] = (),
) -> Imported:
    """Import the dataset directory ``path`` into ``store``; idempotent by event id."""
    t0 = time.perf_counter()
    rows = dataset_rows(path, hash_user, frozenset(forgotten))
    store.create()
    new = _postgres(store, rows) if store.dialect == "postgresql" else _sqlite(store, rows)
    return Imported(rows=len(rows), new=new, seconds=time.perf_counter() - t0)
