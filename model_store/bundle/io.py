"""Versioned, immutable model bundles: write, publish, verify and load one version.

A version directory (see ``store.py`` for the store around it)::

    manifest.json              the typed Manifest (manifest.py), sha256 of every file
    model.safetensors          FusedModel weights
    catalog.safetensors        text_emb (N, T), has_id (N,), log_pop (N,)
    items.parquet              item_id + text columns (the catalog, row k ↔ index k+1)
    histories.parquet          user_id (keyed hash), items: training users' last interactions
    text_adapter.*             text.mode = lora only: the tuned LM's adapter
    index.*, text_index.*      after `fusionrec index` (see indexer/)

Loading checks every file's sha256, the library versions, the dimensions and the item-vocab
hash, and raises ``BundleIntegrityError`` on any mismatch: a bundle is served whole or not
at all. This module is the only reader and writer of ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from model_store.bundle import store as store_mod
from model_store.bundle.manifest import FORMAT, Manifest
from model_store.bundle.store import MANIFEST
from model_store.config import Config
from model_store.data.attributes import AttrType, attribute_types
from model_store.digest import sha256_file
from model_store.errors import BundleIntegrityError, BundleNotFoundError
from model_store.model.fused import FusedModel
from model_store.model.item_tower import grown_embedding

MODEL_FILE = "model.safetensors"
CATALOG_FILE = "catalog.safetensors"
ITEMS_FILE = "items.parquet"
HISTORIES_FILE = "histories.parquet"
REQUIRED_FILES = (MODEL_FILE, CATALOG_FILE, ITEMS_FILE, HISTORIES_FILE)


def vocab_hash(item_ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in item_ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import faiss
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "faiss": faiss.__version__,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


# ---- the manifest ----------------------------------------------------------------------------


def read_manifest(path: Path) -> Manifest:
    """The manifest of the version directory ``path``; BundleIntegrityError when unreadable."""
    try:
        raw = (path / MANIFEST).read_text()
    except FileNotFoundError as exc:
        raise BundleNotFoundError(f"{path} has no {MANIFEST}") from exc
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if where == "format":
            raise BundleIntegrityError(
                f"{path / MANIFEST}: bundle format {first.get('input')!r}; this fusionrec "
                f"reads format {FORMAT} — retrain the bundle with this version"
            ) from None
        raise BundleIntegrityError(
            f"{path / MANIFEST}: field {where!r}: {first['msg']} ({exc.error_count()} "
            "problem(s)); the manifest is damaged or from another fusionrec version"
        ) from None


def publish(store: Path, staged: Path, manifest: Manifest, *, make_current: bool = True) -> Path:
    """Hash the staged files into ``manifest``, write it, rename into place, move CURRENT."""
    files = {
        p.name: sha256_file(p)
        for p in sorted(staged.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = manifest.model_copy(update={"files": files})
    (staged / MANIFEST).write_text(manifest.to_json())
    return store_mod.commit(store, staged, manifest.version, make_current=make_current)


def child_manifest(parent: Manifest, version: str) -> Manifest:
    """A copy of ``parent`` for a derived version (an index, an item update): new identity,
    the same training sections; ``files`` is filled in by :func:`publish`."""
    return parent.model_copy(
        update={
            "version": version,
            "created_at": now_iso(),
            "parent_version": parent.version,
            "libraries": library_versions(),
            "files": {},
        },
        deep=True,
    )


def verify_files(directory: Path, files: dict[str, str]) -> None:
    """Check that each listed file exists under ``directory`` with its sha256."""
    for name, digest in files.items():
        f = store_mod.contained(directory, name, what=f"{directory / MANIFEST}: file")
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


def verify(path: Path, manifest: Manifest) -> None:
    """Check every file's sha256 and the library versions; raise on any mismatch."""
    for required in REQUIRED_FILES:
        if required not in manifest.files:
            raise BundleIntegrityError(f"{path}: manifest lists no {required}")
    verify_files(path, manifest.files)
    here = library_versions()
    for lib in ("torch", "transformers"):
        built = manifest.libraries.get(lib)
        if built and _major_minor(built) != _major_minor(here[lib]):
            raise BundleIntegrityError(
                f"{path}: built with {lib} {built}, this process has {here[lib]}; "
                "retrain or install the matching version"
            )


# ---- the bundle --------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A loaded, verified bundle: the model plus the catalog around it."""

    path: Path
    manifest: Manifest
    model: FusedModel
    item_ids: list[str]  # row k ↔ model index k + 1
    items: pd.DataFrame  # item_id + text columns + attribute columns
    histories: dict[str, list[str]]

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def config(self) -> Config:
        return self.manifest.config

    @property
    def text_columns(self) -> list[str]:
        return list(self.manifest.data.text_columns)

    @property
    def attribute_types(self) -> dict[str, AttrType]:
        """Every filterable field and its type (text columns, declared ones, ``available``)."""
        return attribute_types(self.text_columns, self.manifest.data.attributes)

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


def load_bundle(store: Path, version: str | None = None, *, device: str = "cpu") -> Bundle:
    """Load and verify a bundle (default: CURRENT). Raises BundleError, never half-loads."""
    path = store_mod.resolve_version(store, version)
    manifest = read_manifest(path)
    verify(path, manifest)
    config = manifest.config
    try:
        catalog = load_file(str(path / CATALOG_FILE))
        state = load_file(str(path / MODEL_FILE))
        items = pd.read_parquet(path / ITEMS_FILE)
        hist = pd.read_parquet(path / HISTORIES_FILE)
    except Exception as exc:  # safetensors/pyarrow raise many kinds
        raise BundleIntegrityError(f"{path}: cannot read bundle files: {exc}") from exc
    items["item_id"] = items["item_id"].astype(str)
    item_ids = items["item_id"].tolist()
    text_emb = catalog["text_emb"]
    if text_emb.shape[0] != len(item_ids):
        raise BundleIntegrityError(
            f"{path}: {CATALOG_FILE} has {text_emb.shape[0]} items, {ITEMS_FILE} {len(item_ids)}"
        )
    if manifest.dims.text != text_emb.shape[1]:
        raise BundleIntegrityError(
            f"{path}: text dim {text_emb.shape[1]} ≠ manifest {manifest.dims.text}"
        )
    if vocab_hash(item_ids) != manifest.item_vocab_hash:
        raise BundleIntegrityError(f"{path}: item vocabulary does not match the manifest's hash")

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros((1, *t.shape[1:]), dtype=t.dtype), t])

    model = FusedModel(
        config.model, pad(text_emb), pad(catalog["has_id"]).bool(), pad(catalog["log_pop"])
    )
    n_emb = state["items.id_emb.weight"].shape[0]
    model.items.id_emb = torch.nn.Embedding(n_emb, config.model.dim, padding_idx=0)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleIntegrityError(f"{path}: weights do not fit the config: {exc}") from exc
    if n_emb < len(item_ids) + 1:  # items added after training: text path only
        model.items.id_emb = grown_embedding(model.items.id_emb, len(item_ids) + 1)
    model.use_head = manifest.rerank.enabled
    model.eval()
    model.to(torch.device(device))
    histories = {
        str(u): [str(i) for i in its] for u, its in zip(hist["user_id"], hist["items"], strict=True)
    }
    return Bundle(path, manifest, model, item_ids, items, histories)


def read_items(store: Path, version: str | None = None) -> pd.DataFrame:
    """The catalog table of a bundle (default: CURRENT) without loading its model: what an
    export of the event log needs beside the events (upserted items included)."""
    path = store_mod.resolve_version(store, version)
    files = read_manifest(path).files
    if ITEMS_FILE not in files:
        raise BundleIntegrityError(f"{path}: the manifest lists no {ITEMS_FILE}")
    verify_files(path, {ITEMS_FILE: files[ITEMS_FILE]})
    items = pd.read_parquet(path / ITEMS_FILE)
    items["item_id"] = items["item_id"].astype(str)
    return items
