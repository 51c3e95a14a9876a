"""Dataset loading and validation: interactions + item texts, in canonical order.

A dataset directory holds ``interactions.csv|parquet`` (user_id, item_id, timestamp
[, weight]) and ``items.csv|parquet`` (item_id plus text columns). Everything is
validated up front with vectorised pandas/numpy, so 10M interactions load in seconds;
every error is a :class:`DataError` naming the file, the row and the field.

Row numbers in messages are 1-based data rows, header not counted (data row 1 is the
first line after the CSV header, or the first row of a parquet file). Columns are parsed in
``columns``; per-user splits are in ``splits``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from model_store.data.attributes import AttrType, coerce_column, declared_types
from model_store.data.columns import ids_as_str, parse_timestamps, parse_weights, row_label
from model_store.errors import DataError

log = logging.getLogger(__name__)
ID_COLUMNS = ("user_id", "item_id")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
_SUFFIXES = (".csv", ".parquet")
_MAX_SHOWN = 10


def _show(values: Sequence[object]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:_MAX_SHOWN])
    more = " ..." if len(values) > _MAX_SHOWN else ""
    return f"[{shown}{more}]"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Validated interactions (canonical order) and items with their text columns."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    text_columns: tuple[str, ...]
    source: Path
    # exact duplicate rows (same user, item and timestamp) collapsed into their first
    duplicates_dropped: int = 0
    # the other item columns, kept typed for filters (model_store.data.attributes)
    attributes: dict[str, AttrType] = field(default_factory=dict)

    def item_texts(self) -> list[str]:
        """One text per row of ``items``, formatted like :func:`format_item_text`."""
        columns = [self.items[c].tolist() for c in self.text_columns]
        return [
            _join_fields(zip(self.text_columns, values, strict=True))
            for values in zip(*columns, strict=True)
        ]

    def fingerprint(self) -> str:
        """sha256 hex of the canonical interactions and items content."""
        h = hashlib.sha256()
        h.update(b"fusionrec-dataset-v1\0")
        for name, frame in (("interactions", self.interactions), ("items", self.items)):
            h.update(f"{name}:{len(frame)}:{','.join(map(str, frame.columns))}\0".encode())
            for column in frame.columns:
                _hash_series(h, frame[column])
        h.update(("text_columns:" + "\0".join(self.text_columns)).encode())
        return h.hexdigest()

    def sequences(self) -> dict[str, list[str]]:
        """user_id -> item ids in canonical order."""
        users = self.interactions["user_id"].to_numpy()
        items = self.interactions["item_id"].tolist()
        if len(users) == 0:
            return {}
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        return {str(users[s]): items[s:e] for s, e in zip(starts, ends, strict=True)}


def _hash_series(h: hashlib._Hash, series: pd.Series) -> None:
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy()
        h.update(f"{values.dtype.str}\0".encode())
        h.update(np.ascontiguousarray(values).tobytes())
        return
    arr = pa.array(series.astype(str), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    start = arr.offset
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[start : start + len(arr) + 1]
    data = arr.buffers()[2]
    h.update(b"str\0")
    h.update(np.diff(offsets).tobytes())
    if data is not None and len(offsets) > 1:
        h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return str(value).strip() == ""


def _join_fields(fields: Iterable[tuple[str, object]]) -> str:
    return "\n".join(f"{column}: {value}" for column, value in fields if not _is_empty(value))


def format_item_text(row: Mapping[str, object], text_columns: Sequence[str]) -> str:
    """Text of one item: ``"column: value"`` lines joined by newlines, empty values skipped."""
    return _join_fields((c, row.get(c)) for c in text_columns)


def default_text_columns(items: pd.DataFrame) -> tuple[str, ...]:
    """Every string/object column except item_id, in file order."""
    return tuple(
        str(c)
        for c in items.columns
        if c != "item_id"
        and (items[c].dtype == object or pd.api.types.is_string_dtype(items[c].dtype))
    )


def read_table(path_without_suffix: Path) -> tuple[pd.DataFrame, Path]:
    """Read ``X.csv`` or ``X.parquet`` (exactly one must exist); id columns become str."""
    candidates = [path_without_suffix.with_name(path_without_suffix.name + s) for s in _SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    if not found:
        names = " or ".join(str(p) for p in candidates)
        raise DataError(f"missing file: looked for {names}")
    if len(found) > 1:
        raise DataError(
            f"ambiguous dataset table: both {found[0]} and {found[1]} exist; keep only one"
        )
    path = found[0]
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(
                path,
                dtype={c: str for c in ID_COLUMNS},
                keep_default_na=False,
                na_values=[""],
            )
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file (no header, no rows)") from exc
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    frame.columns = [str(c) for c in frame.columns]
    for column in ID_COLUMNS:
        if column in frame.columns:
            frame[column] = ids_as_str(frame[column], path, column)
    return frame.reset_index(drop=True), path


def _require(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; columns found: {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise DataError(f"{path}: empty file (header only, no rows)")


def _canonical_order(users: pd.Series, timestamps: np.ndarray) -> np.ndarray:
    codes, _ = pd.factorize(users, sort=True)
    # np.lexsort is stable: equal (user, timestamp) keep file order.
    return np.lexsort((timestamps, codes))


def _load_items(
    path_without_suffix: Path, text_columns: Sequence[str] | None
) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, AttrType]]:
    items, path = read_table(path_without_suffix)
    _require(items, path, ["item_id"])
    dup_mask = items["item_id"].duplicated(keep=False).to_numpy()
    if dup_mask.any():
        dups = pd.unique(items["item_id"].to_numpy()[dup_mask])
        raise DataError(
            f"{path}: field 'item_id': {len(dups)} duplicate item id(s): {_show(list(dups))}"
        )
    if text_columns is None:
        columns = default_text_columns(items)
    else:
        columns = tuple(text_columns)
        available = [c for c in items.columns if c != "item_id"]
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise DataError(
                f"{path}: text column(s) {unknown} do not exist; available columns: {available}"
            )
    if not columns:
        raise DataError(
            f"{path}: no text column: items need at least one text column besides item_id; "
            f"columns found: {list(items.columns)}"
        )
    out = pd.DataFrame({"item_id": items["item_id"]})
    for column in columns:
        values = items[column]
        text = values.astype(str)
        out[column] = text.where(values.notna().to_numpy(), "")
    attributes = declared_types(items, columns)
    for column, kind in attributes.items():
        out[column] = coerce_column(items[column], kind).to_numpy()
    return out.reset_index(drop=True), columns, attributes


def load_dataset(path: Path, *, text_columns: Sequence[str] | None = None) -> Dataset:
    """Load and validate a dataset directory; interactions come back in canonical order."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"dataset directory {path} does not exist or is not a directory")
    items, columns, attributes = _load_items(path / "items", text_columns)
    raw, ipath = read_table(path / "interactions")
    _require(raw, ipath, INTERACTION_COLUMNS)
    timestamps = parse_timestamps(raw["timestamp"], ipath)
    weights = parse_weights(raw, ipath)
    unknown_mask = ~raw["item_id"].isin(items["item_id"]).to_numpy()
    if unknown_mask.any():
        unknown = pd.unique(raw["item_id"].to_numpy()[unknown_mask])
        first = int(np.flatnonzero(unknown_mask)[0])
        raise DataError(
            f"{ipath}: field 'item_id': {len(unknown)} item id(s) absent from the items file "
            f"(first at {row_label(first)}): {_show(list(unknown))}"
        )
    # the documented rule: rows with the same user, item and timestamp are one interaction
    # (the first row's weight is kept); how many were collapsed is reported
    dup = pd.DataFrame(
        {"u": raw["user_id"].to_numpy(), "i": raw["item_id"].to_numpy(), "t": timestamps}
    ).duplicated(keep="first")
    duplicates = int(dup.sum())
    if duplicates:
        keep = np.flatnonzero(~dup.to_numpy())
        log.warning(
            "%s: %d duplicate interaction row(s) (same user_id, item_id and timestamp) "
            "collapsed into their first occurrence",
            ipath,
            duplicates,
        )
        raw = raw.take(keep).reset_index(drop=True)
        timestamps, weights = timestamps[keep], weights[keep]
    order = _canonical_order(raw["user_id"], timestamps)
    interactions = pd.DataFrame(
        {
            "user_id": raw["user_id"].take(order).reset_index(drop=True),
            "item_id": raw["item_id"].take(order).reset_index(drop=True),
            "timestamp": timestamps[order],
            "weight": weights[order],
        }
    )
    return Dataset(
        interactions=interactions,
        items=items,
        text_columns=columns,
        source=path,
        duplicates_dropped=duplicates,
        attributes=attributes,
    )
