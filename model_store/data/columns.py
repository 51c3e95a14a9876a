"""Parsing and checking the columns of an interactions or items table: ids, timestamps,
weights. Each error is a :class:`DataError` naming the file, the 1-based data row and the
field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from model_store.errors import DataError


def row_label(i: int) -> str:
    return f"row {i + 1} (1-based data row, header not counted)"


def ids_as_str(values: pd.Series, path: Path, column: str) -> pd.Series:
    null = values.isna().to_numpy()
    if null.any():
        i = int(np.flatnonzero(null)[0])
        raise DataError(f"{path}: {row_label(i)}, field {column!r}: empty id")
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        values = values.astype(object)
        dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise DataError(f"{path}: field {column!r}: ids must be strings or integers, got bool")
    if pd.api.types.is_float_dtype(dtype):
        floats = values.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(floats != np.floor(floats))
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{path}: {row_label(i)}, field {column!r}: id {floats[i]!r} is a "
                "non-integral float"
            )
        return pd.Series(floats.astype(np.int64), index=values.index).astype(str)
    if pd.api.types.is_integer_dtype(dtype):
        return values.astype(str)
    out = values.astype(str)
    empty = (out.str.strip() == "").to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}: {row_label(i)}, field {column!r}: empty id")
    return out


def parse_timestamps(values: pd.Series, path: Path) -> np.ndarray:
    """Float unix seconds (float64) from integer or fractional unix seconds or ISO 8601
    (UTC when no zone is given): one representation end to end, the service's
    server-stamped fractional events included. NaN and infinities are refused."""
    field = "timestamp"

    def fail(i: int, value: object) -> DataError:
        return DataError(
            f"{path}: {row_label(i)}, field {field!r}: cannot parse timestamp {value!r} "
            "(expected finite unix seconds, fractions allowed, or ISO 8601)"
        )

    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise fail(0, values.iloc[0]) if len(values) else DataError(f"{path}: no rows")
    if pd.api.types.is_datetime64_any_dtype(dtype):
        null = values.isna().to_numpy()
        if null.any():
            i = int(np.flatnonzero(null)[0])
            raise fail(i, values.iloc[i])
        return _to_unix_seconds(values)
    if pd.api.types.is_numeric_dtype(dtype):
        floats = values.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(floats))
        if len(bad):
            raise fail(int(bad[0]), values.iloc[int(bad[0])])
        return floats
    strings = values.astype(object)
    numeric = pd.to_numeric(strings, errors="coerce").to_numpy(dtype=np.float64)
    out = np.zeros(len(values), dtype=np.float64)
    is_num = np.isfinite(numeric)
    out[is_num] = numeric[is_num]
    rest = np.flatnonzero(~is_num)
    if len(rest):
        sub = strings.iloc[rest]
        # "nan"/"inf" are numbers to to_numeric but not finite: refused here, not parsed
        parsed = pd.to_datetime(sub, format="ISO8601", utc=True, errors="coerce")
        null = parsed.isna().to_numpy()
        if null.any():
            i = int(rest[np.flatnonzero(null)[0]])
            raise fail(i, values.iloc[i])
        out[rest] = _to_unix_seconds(parsed)
    return out


def _to_unix_seconds(values: pd.Series) -> np.ndarray:
    if getattr(values.dt, "tz", None) is None:
        values = values.dt.tz_localize("UTC")
    delta = values - pd.Timestamp(0, tz="UTC")
    return (delta / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def parse_weights(frame: pd.DataFrame, path: Path) -> np.ndarray:
    if "weight" not in frame.columns:
        return np.ones(len(frame), dtype=np.float32)
    raw = frame["weight"]
    numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numeric))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{path}: {row_label(i)}, field 'weight': {raw.iloc[i]!r} is not a finite number"
        )
    return numeric.astype(np.float32)
