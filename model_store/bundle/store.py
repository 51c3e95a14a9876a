"""The store: one immutable directory per bundle version and the ``CURRENT`` pointer.

Layout::

    STORE/
      CURRENT                      the current version name (replaced atomically)
      v20261128T134501-3fa2c1/     one immutable directory per version (see bundle.py)
      .tmp-<version>/              a version being written; renamed into place when complete

A reader never sees a half-written version: files are written into ``.tmp-<version>``,
fsynced, the directory is renamed to ``<version>`` and only then ``CURRENT`` is replaced
(``model_store.bundle.io.publish``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from model_store.errors import BundleError, BundleIntegrityError, BundleNotFoundError

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


def new_version_name() -> str:
    now = dt.datetime.now(dt.UTC)
    return f"v{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def contained(root: Path, name: str, *, what: str) -> Path:
    """``root / name`` when ``name`` is one plain entry of ``root`` that resolves inside it
    (no separators, ``..``, absolute paths or symlinks leading out); else
    ``BundleIntegrityError``: a store never serves or copies files from elsewhere."""
    path = root / name
    plain = bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
    if plain:
        try:
            plain = path.resolve().parent == root.resolve()
        except (OSError, RuntimeError):
            plain = False
    if not plain:
        raise BundleIntegrityError(
            f"{what} {name!r} does not name an entry inside {root}; refusing to use it "
            "(a store only serves its own files)"
        )
    return path


def current_version(store: Path) -> str:
    pointer = store / CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError as exc:
        raise BundleNotFoundError(
            f"no bundle published in {store} (no {CURRENT} file); run `fusionrec train` first"
        ) from exc
    if not name:
        raise BundleNotFoundError(f"{pointer} is empty; publish a bundle")
    if not contained(store, name, what=f"{pointer}: version").is_dir():
        raise BundleNotFoundError(f"{pointer} names version {name!r}, which does not exist")
    return name


def list_versions(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted(
        p.name
        for p in store.iterdir()
        if p.is_dir() and p.name.startswith("v") and (p / MANIFEST).exists()
    )


def resolve_version(store: Path, version: str | None) -> Path:
    name = version or current_version(store)
    path = contained(store, name, what="bundle version")
    if not (path / MANIFEST).is_file():
        raise BundleNotFoundError(
            f"bundle version {name!r} not found in {store}; available: {list_versions(store)}"
        )
    return path


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_current(store: Path, version: str) -> None:
    tmp = store / f".{CURRENT}.{secrets.token_hex(4)}"
    tmp.write_text(version + "\n")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, store / CURRENT)
    fsync_dir(store)


@contextlib.contextmanager
def staging(store: Path, version: str) -> Iterator[Path]:
    """A temp directory that becomes ``store/version`` on success and vanishes on failure."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".tmp-{version}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit(store: Path, staged: Path, version: str, *, make_current: bool = True) -> Path:
    """fsync the staged files, rename the directory to ``store/version``, move CURRENT."""
    for p in staged.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    final = store / version
    try:
        os.rename(staged, final)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise BundleError(f"cannot publish {final}: {exc}") from exc
    fsync_dir(store)
    if make_current:
        set_current(store, version)
    return final


def copy_into(src: Path, dst: Path, names: list[str]) -> None:
    """Hard-link (or copy) unchanged files of a parent version into a staged one."""
    for name in names:
        contained(src, name, what=f"{src / MANIFEST}: file")
        try:
            os.link(src / name, dst / name)
        except OSError:
            shutil.copy2(src / name, dst / name)
