"""The store a rehearsal serves: trained once on the data's history (or given), copied for
each run, and the operations done to it from outside: importing the history into the log,
publishing a corrupt bundle, the retrain job's config, reading a bundle's histories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd

from bench.rehearse.plan import ROOT
from bench.rehearse.stack import fusionrec_bin

CURRENT = "CURRENT"


BOX = str.maketrans("", "", "│╭╮╰╯─┃━┏┓┗┛")
WIDE = {**os.environ, "COLUMNS": "200"}  # one message a line in the CLI's (rich) output


def _run(
    cmd: list[str], log: Path, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, text=True, timeout=timeout_s, cwd=ROOT,
            env=env or WIDE,
        )  # fmt: skip


def last_message(text: str) -> str:
    """The CLI's error line in a log (box drawing removed), else its last line."""
    lines = [ln.translate(BOX).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("$ ")]
    errors = [ln for ln in lines if "rror" in ln or "No such" in ln or "failed" in ln]
    return (errors or lines or [""])[-1][:300]


def ensure_data(data: Path, log: Path) -> None:
    """MovieLens-100k into ``data`` unless a dataset is already there."""
    if any((data / f"interactions.{s}").exists() for s in ("csv", "parquet")):
        return
    r = _run([fusionrec_bin(), "data", "movielens-100k", "--out", str(data)], log, 1800)
    if r.returncode != 0:
        raise RuntimeError(f"`fusionrec data movielens-100k` failed; see {log}")


def ensure_store(store: Path, history: Path, epochs: int, log: Path) -> Path:
    """A trained, indexed store on the data's history (reused when it has a CURRENT)."""
    if (store / CURRENT).exists():
        return store
    f = fusionrec_bin()
    steps = [
        [f, "train", "--data", str(history), "--store", str(store), "--epochs", str(epochs)],
        [f, "index", "--store", str(store)],
    ]
    for cmd in steps:
        if _run(cmd, log, 3600).returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd[:2])}` failed; see {log}")
    return store


def current(store: Path) -> str:
    return (store / CURRENT).read_text().strip()


def stage(src: Path, dst: Path) -> Path:
    """A private copy of ``src``'s CURRENT version (and pointer): the run changes only it."""
    version = current(src)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / version, dst / version)
    (dst / CURRENT).write_text(version + "\n")
    return dst


def set_current(store: Path, version: str) -> None:
    tmp = store / f".{CURRENT}.rehearsal"
    tmp.write_text(version + "\n")
    os.replace(tmp, store / CURRENT)


def publish_corrupt(store: Path) -> tuple[str, str]:
    """Copy CURRENT under a new version, flip bytes in its weights (the manifest's hashes
    kept), make it CURRENT as a careless publisher would. Returns (corrupt, previous)."""
    previous = current(store)
    name = f"v{time.strftime('%Y%m%dT%H%M%S')}000-c0ffee"
    src, dst = store / previous, store / name
    shutil.copytree(src, dst)
    weights = sorted(dst.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    target = weights[-1] if weights else max(dst.iterdir(), key=lambda p: p.stat().st_size)
    with open(target, "r+b") as fh:
        size = target.stat().st_size
        fh.seek(size // 2)
        chunk = fh.read(64)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    set_current(store, name)
    return name, previous


def retrain_config(work: Path, epochs: int) -> Path:
    """The retrain job's config file: `fusionrec retrain`'s own recipe (CURRENT's, warm
    started) with only the epochs capped, to fit the run's schedule."""
    path = work / "retrain-config.json"
    cfg = {"train": {"epochs": epochs}}
    path.write_text(json.dumps(cfg))
    return path


def import_history(
    events_url: str, store: Path, history: Path, log: Path, user_key: str | None = None
) -> tuple[bool, str, float]:
    """``fusionrec events import`` of the history into the log: (ok, message, seconds).
    ``user_key``: the replicas' FUSIONREC_USER_KEY_SECRET, which the operator hands the
    import too, so imported shoppers and live ones are the same users in the log."""
    cmd = [fusionrec_bin(), "events", "import", "--events", events_url, "--data", str(history)]
    env = {**WIDE, "FUSIONREC_USER_KEY_SECRET": user_key} if user_key else WIDE
    t0 = time.monotonic()
    start = len(log.read_text()) if log.exists() else 0
    r = _run([*cmd, "--store", str(store)], log, 1800, env)
    if r.returncode == 2 and "--store" in log.read_text()[start:]:
        r = _run(cmd, log, 1800, env)  # a CLI without --store (user ids hashed otherwise)
    seconds = time.monotonic() - t0
    return (
        r.returncode == 0,
        f"exit {r.returncode}: {last_message(log.read_text()[start:])}",
        seconds,
    )


def versions(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.is_dir() and p.name.startswith("v"))


def manifests(store: Path) -> dict[str, dict[str, object]]:
    out = {}
    for v in versions(store):
        try:
            out[v] = json.loads((store / v / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def root(version: str, found: dict[str, dict[str, object]]) -> str:
    """The trained version ``version`` derives from (through index and catalog changes)."""
    seen = set()
    while version not in seen:
        seen.add(version)
        parent = found.get(version, {}).get("parent_version")
        if not isinstance(parent, str) or parent not in found:
            return version
        version = parent
    return version


def bundle_users(store: Path, version: str) -> set[str]:
    """The user ids (raw or hashed) whose training histories ``version`` carries."""
    path = store / version / "histories.parquet"
    if not path.exists():
        return set()
    return set(pd.read_parquet(path, columns=["user_id"])["user_id"].astype(str))


def snapshot_at(manifest: dict[str, object]) -> float | None:
    """When the retrain round that made a bundle read the tombstones and the log (unix
    seconds; its gate's ``snapshot_at``), None when it records none."""
    gate = manifest.get("gate")
    at = gate.get("snapshot_at") if isinstance(gate, dict) else None
    return float(at) if isinstance(at, int | float) else None


def bundle_created(store: Path, version: str) -> float | None:
    try:
        return (store / version / "manifest.json").stat().st_mtime
    except OSError:
        return None
