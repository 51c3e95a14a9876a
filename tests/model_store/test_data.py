from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.data.dataset import (
    Dataset,
    default_text_columns,
    format_item_text,
    load_dataset,
    read_table,
)
from model_store.data.splits import holdout_last, leave_one_out
from model_store.errors import DataError

ITEMS = "item_id,title,genres\ni1,Alpha,Drama|War\ni2,Beta,\ni3,,Comedy\n"
INTER = (
    "user_id,item_id,timestamp,rating\n"
    "u2,i1,100,5\n"  # row 1
    "u1,i3,50,3\n"  # row 2
    "u1,i2,50,4\n"  # row 3: same timestamp as row 2 -> stays after it
    "u1,i1,10,1\n"  # row 4
    "u2,i2,100,2\n"  # row 5: tie with row 1
)


def write(tmp: Path, interactions: str = INTER, items: str = ITEMS) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "interactions.csv").write_text(interactions)
    (tmp / "items.csv").write_text(items)
    return tmp


def error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_loads_in_canonical_order_with_stable_ties(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path))
    df = ds.interactions
    assert list(df.columns) == ["user_id", "item_id", "timestamp", "weight"]
    assert df.user_id.tolist() == ["u1", "u1", "u1", "u2", "u2"]
    assert df.item_id.tolist() == ["i1", "i3", "i2", "i1", "i2"]
    assert df.timestamp.dtype == np.float64 and df.weight.dtype == np.float32
    assert (df.weight == 1.0).all()
    assert list(df.index) == list(range(5))
    assert type(df.user_id.iloc[0]) is str and type(ds.items.item_id.iloc[0]) is str
    assert ds.sequences() == {"u1": ["i1", "i3", "i2"], "u2": ["i1", "i2"]}
    assert ds.text_columns == ("title", "genres")
    assert ds.items.genres.tolist() == ["Drama|War", "", "Comedy"]


def test_item_texts_format(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path))
    assert ds.item_texts() == ["title: Alpha\ngenres: Drama|War", "title: Beta", "genres: Comedy"]
    assert format_item_text({"title": "X", "genres": None, "other": 1}, ["genres", "title"]) == (
        "title: X"
    )
    assert format_item_text({"year": 1995, "t": float("nan")}, ["year", "t"]) == "year: 1995"
    ds2 = load_dataset(tmp_path, text_columns=["genres"])
    assert ds2.item_texts() == ["genres: Drama|War", "", "genres: Comedy"]
    # a column that is not a text column stays, as a (filterable) text attribute
    assert list(ds2.items.columns) == ["item_id", "genres", "title"]
    assert ds2.attributes == {"title": "text"}


def test_csv_and_parquet_load_identically(tmp_path: Path) -> None:
    csv = load_dataset(write(tmp_path / "csv"))
    pq = tmp_path / "pq"
    pq.mkdir()
    inter = pd.read_csv(tmp_path / "csv" / "interactions.csv")  # ids stay str ("u1")
    inter.to_parquet(pq / "interactions.parquet")
    pd.read_csv(tmp_path / "csv" / "items.csv").to_parquet(pq / "items.parquet")
    par = load_dataset(pq)
    pd.testing.assert_frame_equal(csv.interactions, par.interactions)
    pd.testing.assert_frame_equal(csv.items, par.items)
    assert csv.fingerprint() == par.fingerprint()


def test_integer_ids_in_parquet_match_csv(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "csv", "user_id,item_id,timestamp\n7,1,5\n7,2,6\n", "item_id,t\n1,a\n2,b\n"
    )
    pq = tmp_path / "pq"
    pq.mkdir()
    pd.DataFrame({"user_id": [7, 7], "item_id": [1.0, 2.0], "timestamp": [5, 6]}).to_parquet(
        pq / "interactions.parquet"
    )
    pd.DataFrame({"item_id": [1, 2], "t": ["a", "b"]}).to_parquet(pq / "items.parquet")
    a, b = load_dataset(csv), load_dataset(pq)
    assert b.interactions.item_id.tolist() == ["1", "2"]  # integral floats: no "1.0"
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.DataFrame({"item_id": [1.5, 2.0], "t": ["a", "b"]}).to_parquet(pq / "items.parquet")
    msg = error(pq)
    assert "items.parquet" in msg and "row 1" in msg and "item_id" in msg


def test_iso_timestamps(tmp_path: Path) -> None:
    inter = "user_id,item_id,timestamp\nu,i1,1970-01-01T00:01:40Z\nu,i2,1970-01-01 00:00:50\n"
    ds = load_dataset(write(tmp_path, inter))
    assert ds.interactions.timestamp.tolist() == [50, 100]
    assert ds.interactions.item_id.tolist() == ["i2", "i1"]


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_dataset(write(tmp_path / "a")).fingerprint()
    assert a == load_dataset(write(tmp_path / "b")).fingerprint()
    assert len(a) == 64
    changed = load_dataset(write(tmp_path / "c", INTER.replace("u2,i2,100", "u2,i2,101")))
    assert changed.fingerprint() != a
    changed_text = load_dataset(write(tmp_path / "d", items=ITEMS.replace("Beta", "Beta2")))
    assert changed_text.fingerprint() != a
    assert isinstance(changed_text, Dataset)


@pytest.mark.parametrize(
    ("inter", "items", "fragments"),
    [
        ("user_id,item_id\nu,i1\n", ITEMS, ["interactions.csv", "timestamp", "columns found"]),
        ("user_id,item_id,timestamp\n", ITEMS, ["interactions.csv", "empty"]),
        (INTER, "item_id,title\n", ["items.csv", "empty"]),
        (INTER, "title\nx\n", ["items.csv", "item_id", "columns found"]),
        (INTER, ITEMS + "i2,dup,\ni1,dup,\n", ["items.csv", "2 duplicate", "'i2'", "'i1'"]),
        (INTER, ITEMS + ",nameless,\n", ["items.csv", "row 4", "item_id", "empty id"]),
        (INTER + "u3,,5\n", ITEMS, ["interactions.csv", "row 6", "item_id", "empty id"]),
        (INTER + ",i1,5\n", ITEMS, ["interactions.csv", "row 6", "user_id", "empty id"]),
        (
            INTER + "u3,i9,5,1\nu3,i8,6,1\nu4,i9,7,1\n",
            ITEMS,
            ["interactions.csv", "2 item id(s) absent", "'i9'", "'i8'", "row 6"],
        ),
        (
            INTER + "u3,i1,yesterday,1\n",
            ITEMS,
            ["interactions.csv", "row 6", "timestamp", "yesterday"],
        ),
        (INTER + "u3,i1,,1\n", ITEMS, ["interactions.csv", "row 6", "timestamp"]),
        (
            "user_id,item_id,timestamp,weight\nu,i1,1,1.5\nu,i2,2,heavy\n",
            ITEMS,
            ["interactions.csv", "row 2", "weight", "heavy"],
        ),
        (INTER, "item_id,year\ni1,1\ni2,2\ni3,3\n", ["items.csv", "no text column", "year"]),
    ],
)
def test_validation_errors(tmp_path: Path, inter: str, items: str, fragments: list[str]) -> None:
    msg = error(write(tmp_path, inter, items))
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_unknown_text_column(tmp_path: Path) -> None:
    msg = error(write(tmp_path), text_columns=["title", "plot"])
    assert "items.csv" in msg and "'plot'" in msg and "available" in msg and "genres" in msg


def test_missing_and_ambiguous_files(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(ITEMS)
    msg = error(tmp_path)
    assert "interactions.csv" in msg and "interactions.parquet" in msg and "missing" in msg
    (tmp_path / "interactions.csv").write_text(INTER)
    (tmp_path / "interactions.parquet").write_bytes(b"x")
    msg = error(tmp_path)
    assert "interactions.csv" in msg and "interactions.parquet" in msg
    (tmp_path / "interactions.parquet").unlink()
    (tmp_path / "items.csv").write_text("")
    assert "empty" in error(tmp_path)


def test_read_table_and_default_text_columns(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title,year,genres\n001,A,1999,x\n")
    frame, path = read_table(tmp_path / "items")
    assert path == tmp_path / "items.csv"
    assert frame.item_id.tolist() == ["001"]  # leading zeros kept: ids are read as str
    assert default_text_columns(frame) == ("title", "genres")


def frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df.user_id, df.item_id, strict=True))


def test_leave_one_out_and_holdout_last_with_ties() -> None:
    df = frame(
        [
            ("a", "1", 5), ("a", "2", 5), ("a", "3", 5), ("a", "4", 5),  # all tied: order = rows
            ("b", "1", 1), ("b", "2", 2),  # 2 interactions: all train for LOO
            ("c", "9", 1),
            ("d", "3", 1), ("d", "1", 2), ("d", "2", 2),
        ]
    )  # fmt: skip
    train, valid, test = leave_one_out(df)
    assert pairs(test) == [("a", "4"), ("d", "2")]
    assert pairs(valid) == [("a", "3"), ("d", "1")]
    assert pairs(train) == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("c", "9"), ("d", "3"),
    ]  # fmt: skip
    assert len(train) + len(valid) + len(test) == len(df)
    assert list(train.index) == list(range(len(train)))
    tr, va = holdout_last(df)
    assert pairs(va) == [("a", "4"), ("b", "2"), ("d", "2")]
    assert ("c", "9") in pairs(tr)
    assert len(tr) + len(va) == len(df)


def test_timestamps_are_float_seconds_from_integers_fractions_and_iso(tmp_path: Path) -> None:
    """One representation: float unix seconds, whether the file has integers, the
    server's fractional arrival times or ISO 8601 (issue 29: a fraction was refused)."""
    inter = (
        "user_id,item_id,timestamp\n"
        "u1,i1,1796226459.993\n"
        "u1,i2,1796226460\n"
        "u1,i3,2026-12-31T00:00:00.5Z\n"
    )
    df = load_dataset(write(tmp_path, inter)).interactions
    assert df.timestamp.dtype == np.float64
    iso = pd.Timestamp("2026-12-31T00:00:00.5Z").timestamp()
    assert df.timestamp.tolist() == [1796226459.993, 1796226460.0, iso]
    assert df.item_id.tolist() == ["i1", "i2", "i3"]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "soon"])
def test_non_finite_or_unparseable_timestamps_are_refused(tmp_path: Path, bad: str) -> None:
    msg = error(write(tmp_path, f"user_id,item_id,timestamp\nu1,i1,1\nu1,i2,{bad}\n"))
    assert "row 2" in msg and "'timestamp'" in msg
