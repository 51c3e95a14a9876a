"""Which bundle versions are in use, and ``fusionrec gc``: remove the others, oldest first.

Every serving process reports the version it serves in ``<store>/serving/<host>-<pid>.json``
(:func:`report_serving`: at every load and swap, and refreshed by its catalog poll every
:data:`REFRESH_S`); a report younger than :data:`LIVE_S` counts as a replica serving that
version (an older one was left by a process that died). :func:`collect` keeps the ``keep``
newest versions, CURRENT and every version reported as served, and removes the rest: each
is first renamed out of the way (``.gc-<name>``, atomic: no reader ever sees half a
version), then deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from model_store.bundle import store as store_mod
from model_store.errors import ConfigError

SERVING = "serving"
REFRESH_S = 30.0
LIVE_S = 600.0


def _report_path(store: Path) -> Path:
    return store / SERVING / f"{socket.gethostname()}-{os.getpid()}.json"


def report_serving(store: Path, version: str) -> None:
    """Record (atomically) that this process serves ``version``; best effort."""
    path = _report_path(store)
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version, "at": time.time()}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only store: gc cannot see this replica, so never run it there


def clear_serving(store: Path) -> None:
    """This process stopped serving (a clean shutdown)."""
    with contextlib.suppress(OSError):
        _report_path(store).unlink(missing_ok=True)


def served_versions(store: Path, *, live_s: float = LIVE_S) -> set[str]:
    """Versions that a live process reports serving."""
    out: set[str] = set()
    now = time.time()
    for path in (store / SERVING).glob("*.json"):
        try:
            report = json.loads(path.read_text())
            if now - float(report["at"]) <= live_s:
                out.add(str(report["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not a report
    return out


def collect(store: Path, keep: int, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Remove every version but the ``keep`` newest, CURRENT and the served ones;
    (removed, kept) names."""
    if keep < 1:
        raise ConfigError(f"--keep {keep}: at least 1 version must be kept")
    versions = store_mod.list_versions(store)
    if not versions:
        raise ConfigError(f"{store}: no bundle versions to collect")
    protected = set(versions[-keep:]) | served_versions(store)
    try:
        protected.add(store_mod.current_version(store))
    except Exception as exc:  # no CURRENT: refuse rather than guess what is live
        raise ConfigError(f"{store}: CURRENT cannot be read ({exc}); nothing removed") from exc
    removed = [v for v in versions if v not in protected]
    if not dry_run:
        for name in removed:
            if name == store_mod.current_version(store):  # made CURRENT meanwhile
                continue
            doomed = store / f".gc-{name}"
            os.replace(store / name, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return removed, [v for v in versions if v in protected]
