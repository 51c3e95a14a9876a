"""Versioned, immutable model bundles under a store root.

Layout::

    STORE/
      CURRENT                      the current version name (replaced atomically)
      v20261128T134501-3fa2c1/     one immutable directory per version
        manifest.json              version, created_at, parent, config, data, metrics,
                                   libraries, dims, item-vocab hash, sha256 of every file
        model.safetensors          FusedModel weights
        catalog.safetensors        text_emb (N, T), has_id (N,), log_pop (N,)
        items.parquet              item_id + text columns (the catalog, row k ↔ index k+1)
        histories.parquet          user_id, items: the last interactions of training users
        index.faiss, index.json    after `fusionrec index` (see indexer/)

Publishing writes into ``STORE/.tmp-<version>``, fsyncs, renames it to ``STORE/<version>``
and only then replaces ``CURRENT``; a reader never sees a half-written version. Loading
checks every file's sha256, the library versions, the dimensions and the item-vocab hash,
and raises ``BundleIntegrityError`` on any mismatch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from model_store.config import Config
from model_store.errors import BundleError, BundleIntegrityError, BundleNotFoundError
from model_store.model import FusedModel

FORMAT = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
MODEL_FILE = "model.safetensors"
CATALOG_FILE = "catalog.safetensors"
ITEMS_FILE = "items.parquet"
HISTORIES_FILE = "histories.parquet"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vocab_hash(item_ids: list[str] | pd.Series) -> str:
    h = hashlib.sha256()
    for i in item_ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import faiss
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    versions["faiss"] = faiss.__version__
    return versions


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def new_version_name() -> str:
    now = dt.datetime.now(dt.UTC)
    return f"v{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


# ---- store-level operations ---------------------------------------------------------------


def current_version(store: Path) -> str:
    pointer = store / CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError as exc:
        raise BundleNotFoundError(
            f"no bundle published in {store} (no {CURRENT} file); run `fusionrec train` first"
        ) from exc
    if not name or not (store / name).is_dir():
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
    path = store / name
    if not (path / MANIFEST).is_file():
        raise BundleNotFoundError(
            f"bundle version {name!r} not found in {store}; available: {list_versions(store)}"
        )
    return path


def _fsync_dir(path: Path) -> None:
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
    _fsync_dir(store)


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


def publish(
    store: Path, staged: Path, manifest: dict[str, Any], *, make_current: bool = True
) -> Path:
    """Hash the staged files into the manifest, write it, rename into place, move CURRENT."""
    version = manifest["version"]
    files = {
        p.name: sha256_file(p)
        for p in sorted(staged.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {**manifest, "files": files}
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    for p in staged.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    final = store / version
    try:
        os.rename(staged, final)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise BundleError(f"cannot publish {final}: {exc}") from exc
    _fsync_dir(store)
    if make_current:
        set_current(store, version)
    return final


def copy_into(src: Path, dst: Path, names: list[str]) -> None:
    """Hard-link (or copy) unchanged files of a parent version into a staged one."""
    for name in names:
        try:
            os.link(src / name, dst / name)
        except OSError:
            shutil.copy2(src / name, dst / name)


# ---- reading --------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise BundleNotFoundError(f"{path} has no {MANIFEST}") from exc
    except json.JSONDecodeError as exc:
        raise BundleIntegrityError(f"{path / MANIFEST} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BundleIntegrityError(
            f"{path / MANIFEST}: format {manifest.get('format')!r}, this fusionrec reads {FORMAT}"
        )
    return manifest


def verify_files(directory: Path, files: dict[str, str]) -> None:
    """Check that each listed file exists under ``directory`` with its sha256."""
    for name, digest in files.items():
        f = directory / name
        if not f.is_file():
            raise BundleIntegrityError(
                f"{directory}: file {name} listed in the manifest is missing"
            )
        actual = sha256_file(f)
        if actual != digest:
            raise BundleIntegrityError(
                f"{f}: sha256 {actual[:12]}… does not match the manifest's {digest[:12]}…; "
                "the file was changed or corrupted — refusing to load"
            )


def verify(path: Path, manifest: dict[str, Any]) -> None:
    """Check every file's sha256 and the library versions; raise on any mismatch."""
    files: dict[str, str] = manifest.get("files", {})
    for required in (MODEL_FILE, CATALOG_FILE, ITEMS_FILE):
        if required not in files:
            raise BundleIntegrityError(f"{path}: manifest lists no {required}")
    verify_files(path, files)
    here = library_versions()
    for lib in ("torch", "transformers"):
        built = manifest.get("libraries", {}).get(lib)
        if built and _major_minor(built) != _major_minor(here[lib]):
            raise BundleIntegrityError(
                f"{path}: built with {lib} {built}, this process has {here[lib]}; "
                "retrain or install the matching version"
            )


@dataclass
class Bundle:
    """A loaded, verified bundle: the model plus the catalog around it."""

    path: Path
    manifest: dict[str, Any]
    config: Config
    model: FusedModel
    item_ids: list[str]  # row k ↔ model index k + 1
    items: pd.DataFrame  # item_id + text columns
    histories: dict[str, list[str]]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def text_columns(self) -> list[str]:
        return list(self.manifest["data"]["text_columns"])

    def index_of(self) -> dict[str, int]:
        return {item: k + 1 for k, item in enumerate(self.item_ids)}


def save_catalog(path: Path, model: FusedModel) -> None:
    save_file(
        {
            "text_emb": model.text_emb[1:].contiguous().cpu(),
            "has_id": model.has_id[1:].to(torch.uint8).contiguous().cpu(),
            "log_pop": model.log_pop[1:].contiguous().cpu(),
        },
        str(path),
    )


def save_model(path: Path, model: FusedModel) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"use_head": str(model.use_head)})


def write_bundle_files(
    staged: Path, model: FusedModel, items: pd.DataFrame, histories: dict[str, list[str]]
) -> None:
    save_model(staged / MODEL_FILE, model)
    save_catalog(staged / CATALOG_FILE, model)
    items.to_parquet(staged / ITEMS_FILE, index=False)
    hist = pd.DataFrame({"user_id": list(histories), "items": list(histories.values())})
    hist.to_parquet(staged / HISTORIES_FILE, index=False)


def load_bundle(
    store: Path,
    version: str | None = None,
    *,
    device: str = "cpu",
    check: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Bundle:
    """Load and verify a bundle (default: CURRENT). Raises BundleError, never half-loads."""
    path = resolve_version(store, version)
    manifest = read_manifest(path)
    verify(path, manifest)
    if check is not None:
        check(path, manifest)
    config = Config.from_dict(manifest["config"])
    try:
        catalog = load_file(str(path / CATALOG_FILE))
        state = load_file(str(path / MODEL_FILE))
        items = pd.read_parquet(path / ITEMS_FILE)
        hist_path = path / HISTORIES_FILE
        hist = pd.read_parquet(hist_path) if hist_path.exists() else None
    except Exception as exc:  # safetensors/pyarrow raise many kinds
        raise BundleIntegrityError(f"{path}: cannot read bundle files: {exc}") from exc
    items["item_id"] = items["item_id"].astype(str)
    item_ids = items["item_id"].tolist()
    dims = manifest.get("dims", {})
    text_emb = catalog["text_emb"]
    if text_emb.shape[0] != len(item_ids):
        raise BundleIntegrityError(
            f"{path}: {CATALOG_FILE} has {text_emb.shape[0]} items, {ITEMS_FILE} {len(item_ids)}"
        )
    if dims and int(dims.get("text", text_emb.shape[1])) != text_emb.shape[1]:
        raise BundleIntegrityError(f"{path}: text dim {text_emb.shape[1]} ≠ manifest {dims}")
    if manifest.get("item_vocab_hash") and vocab_hash(item_ids) != manifest["item_vocab_hash"]:
        raise BundleIntegrityError(f"{path}: item vocabulary does not match the manifest's hash")

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros((1, *t.shape[1:]), dtype=t.dtype), t])

    model = FusedModel(
        config.model, pad(text_emb), pad(catalog["has_id"]).bool(), pad(catalog["log_pop"])
    )
    n_emb = state["items.id_emb.weight"].shape[0]
    if n_emb != model.items.id_emb.num_embeddings:
        model.items.id_emb = torch.nn.Embedding(n_emb, config.model.dim, padding_idx=0)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleIntegrityError(f"{path}: weights do not fit the config: {exc}") from exc
    if n_emb < len(item_ids) + 1:  # items added after training: text path only
        old = model.items.id_emb
        grown = torch.nn.Embedding(len(item_ids) + 1, old.embedding_dim, padding_idx=0)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:n_emb] = old.weight
        model.items.id_emb = grown
    model.use_head = bool(manifest.get("rerank", {}).get("enabled", False))
    model.eval()
    model.to(torch.device(device))
    histories: dict[str, list[str]] = {}
    if hist is not None:
        histories = {
            str(u): [str(i) for i in its]
            for u, its in zip(hist["user_id"], hist["items"], strict=True)
        }
    return Bundle(
        path=path,
        manifest=manifest,
        config=config,
        model=model,
        item_ids=item_ids,
        items=items,
        histories=histories,
    )


def base_manifest(version: str, config: Config, *, parent: str | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parent_version": parent,
        "config": config.to_dict(),
        "libraries": library_versions(),
    }
