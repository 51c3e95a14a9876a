"""Indexing real tiny bundles: publish, own-neighbour, add/remove, atomicity, load checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import indexer.build
import indexer.index
from indexer import catalog
from indexer.encode import encode_catalog, query_vectors
from indexer.publish import add_items, index_bundle, load_index, remove_items
from model_store.bundle import io as bundle_mod
from model_store.bundle import store as store_mod
from model_store.bundle.io import load_bundle
from model_store.errors import (
    BundleError,
    BundleIntegrityError,
    IndexBuildError,
    InvalidInputError,
    NotFoundError,
)
from model_store.model.fused import left_pad
from tests.helpers.bundles import train_tiny


@pytest.fixture(scope="module")
def indexed_store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny_store`` with a flat index published on top (read-only)."""
    store = tmp_path_factory.mktemp("indexed") / "store"
    shutil.copytree(tiny_store, store)
    index_bundle(store, kind="flat", device="cpu")
    return store


@pytest.fixture
def store(indexed_store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(indexed_store, out)
    return out


def versions(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.is_dir())


def test_index_publishes_child_version(indexed_store: Path, tiny_store: Path) -> None:
    parent = store_mod.current_version(tiny_store)
    bundle = load_bundle(indexed_store)
    m = bundle.manifest
    assert m.parent_version == parent and m.version != parent
    section = m.index
    assert section is not None
    assert section.kind == "flat" and section.dim == bundle.model.out_dim
    assert section.n_vectors == len(bundle.item_ids)
    assert section.recall10 == 1.0 and section.recall100 == 1.0
    assert section.recall_query_source == "user_histories"
    assert set(section.files) == {"index.faiss", "index.json"}
    assert all(m.files[f] == h for f, h in section.files.items())
    assert section.memory_bytes > 0 and section.build_seconds >= 0
    # unchanged parent files are hard-linked, not rewritten
    parent_model = indexed_store / parent / bundle_mod.MODEL_FILE
    assert (bundle.path / bundle_mod.MODEL_FILE).stat().st_ino == parent_model.stat().st_ino


def test_index_returns_the_exact_neighbours(indexed_store: Path) -> None:
    bundle = load_bundle(indexed_store)
    index = load_index(bundle)
    vectors = encode_catalog(bundle)
    _, rows = index.search(vectors, 1)
    np.testing.assert_array_equal(rows[:, 0], np.argmax(vectors @ vectors.T, axis=1))
    users = query_vectors(bundle, max_users=50)
    _, rows = index.search(users, 10)
    exact = np.argsort(-(users @ vectors.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, exact)


def test_each_item_is_its_own_nearest_neighbour(tiny_dataset: Path, tmp_path: Path) -> None:
    # the text bundle's item vectors are unit LM embeddings: inner product = cosine
    train_tiny(tiny_dataset, tmp_path, fusion="text", epochs=1)
    index_bundle(tmp_path, kind="hnsw", device="cpu")
    bundle = load_bundle(tmp_path)
    index = load_index(bundle)
    assert index.kind == "hnsw"
    _, rows = index.search(encode_catalog(bundle), 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(bundle.item_ids)))


def test_add_makes_new_item_retrievable_and_remove_hides_it(store: Path) -> None:
    before = load_bundle(store)
    like = before.items.iloc[0]
    text = {c: str(like[c]) for c in before.text_columns}
    path = add_items(store, [{"item_id": "brand-new", **text}], device="cpu")
    bundle = load_bundle(store)
    assert bundle.path == path and bundle.manifest.parent_version == before.version
    assert bundle.item_ids[-1] == "brand-new" and len(bundle.item_ids) == len(before.item_ids) + 1
    assert not bool(bundle.model.has_id[-1])  # text path only
    index = load_index(bundle)
    row = len(bundle.item_ids) - 1
    assert index.ntotal == len(bundle.item_ids)
    vec = encode_catalog(bundle, rows=np.array([row]))
    # the index serves the new item as exact search over the catalog's vectors would
    all_vectors = encode_catalog(bundle)
    exact = np.argsort(-(all_vectors @ vec[0]), kind="stable")[:50]
    got_scores, got = index.search(vec, 50)
    assert row in got[0] and row in exact
    np.testing.assert_allclose(got_scores[0], (all_vectors @ vec[0])[got[0]], rtol=1e-4)
    user = bundle.model.user_vectors(left_pad([[1, 1, 1]], bundle.config.model.max_len))
    assert row in index.search(user.detach().numpy(), 50)[1][0]
    assert bundle.manifest.catalog is not None
    assert bundle.manifest.catalog.n_added_after_training == 1
    # changed text of an existing item: re-encoded, vector replaced
    add_items(
        store, [{"item_id": "brand-new", before.text_columns[0]: "totally different"}], device="cpu"
    )
    edited = load_bundle(store)
    assert len(edited.item_ids) == len(bundle.item_ids)
    assert edited.items.iloc[row][before.text_columns[0]] == "totally different"
    assert not torch.allclose(edited.model.text_emb[row + 1], bundle.model.text_emb[row + 1])
    remove_items(store, ["brand-new"])
    gone = load_bundle(store)
    gone_index = load_index(gone)
    assert row in gone_index.removed and gone_index.ntotal == len(gone.item_ids) - 1
    assert row not in gone_index.search(vec, 100)[1]
    assert gone.item_ids[row] == "brand-new"  # the catalog row stays, marked removed
    # a full rebuild keeps the removal
    index_bundle(store, kind="hnsw", device="cpu")
    rebuilt = load_index(load_bundle(store))
    assert row in rebuilt.removed and row not in rebuilt.rows()


def test_in_memory_updates_validate(store: Path) -> None:
    bundle = load_bundle(store)
    index = load_index(bundle)
    n = len(bundle.item_ids)
    with pytest.raises(NotFoundError, match="nope"):
        catalog.remove_items(bundle, index, ["nope"])
    with pytest.raises(InvalidInputError, match="no text"):
        catalog.upsert_items(bundle, index, [{"item_id": "x"}], device="cpu")
    with pytest.raises(InvalidInputError, match="appears twice"):
        catalog.upsert_items(bundle, index, [{"item_id": "x", "title": "a"}] * 2, device="cpu")
    with pytest.raises(InvalidInputError, match=r"items\[0\]\.title: .*must be a non-blank string"):
        catalog.upsert_items(bundle, index, [{"item_id": "x", "title": 3}], device="cpu")
    assert len(bundle.item_ids) == n and index.ntotal == n


def test_publish_is_atomic(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = store_mod.current_version(store)
    before = versions(store)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(indexer.index.faiss, "write_index", broken)
    with pytest.raises(OSError, match="injected"):
        index_bundle(store, kind="flat", device="cpu")
    with pytest.raises(OSError, match="injected"):
        remove_items(store, [load_bundle(store).item_ids[0]])
    assert store_mod.current_version(store) == current
    assert versions(store) == before
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp")]
    load_index(load_bundle(store))  # the old version still loads


def test_recall_floor_refuses_to_publish(store: Path) -> None:
    current = store_mod.current_version(store)
    with pytest.raises(IndexBuildError, match="floor"):
        index_bundle(
            store,
            kind="hnsw",
            recall_floor=1.01,
            device="cpu",
            params=indexer.build.IndexParams(max_ef_search=256),
        )
    assert store_mod.current_version(store) == current


def test_tampered_index_is_refused(store: Path) -> None:
    path = store_mod.resolve_version(store, None)
    f = path / "index.faiss"
    raw = bytearray(f.read_bytes())
    raw[-10] ^= 0x01
    f.unlink()  # break the hard link before writing
    f.write_bytes(bytes(raw))
    manifest = bundle_mod.read_manifest(path)
    with pytest.raises(BundleIntegrityError, match=r"index.faiss.*sha256"):
        load_bundle(store)
    # the index check itself refuses too (the service calls it after load_bundle)
    with pytest.raises(BundleIntegrityError, match="sha256"):
        indexer.build.read_index(path, manifest.index)


def test_manifest_model_mismatch_is_refused(store: Path) -> None:
    path = store_mod.resolve_version(store, None)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["index"]["n_vectors"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(store)  # manifest is not hashed; the index check catches it
    with pytest.raises(BundleIntegrityError, match="vector count"):
        load_index(bundle)
    manifest["index"]["n_vectors"] -= 1
    manifest["index"]["dim"] = 7
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="dimension"):
        load_index(load_bundle(store))
    # an index from a model with another vector dimension
    manifest["index"]["dim"] = load_bundle(store).model.out_dim
    (path / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(store)
    bundle.model.cfg.dim = 48
    with pytest.raises(BundleIntegrityError, match=r"dimension \(model\)"):
        load_index(bundle)


def test_add_without_index_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_store, tmp_path / "s")
    with pytest.raises(BundleError, match="no index"):
        add_items(tmp_path / "s", [{"item_id": "z", "title": "x"}], device="cpu")


def test_search_index_is_built_for_large_catalogs_and_follows_updates(store: Path) -> None:
    from indexer.build import IndexParams
    from indexer.publish import load_text_index, text_rows

    assert load_text_index(load_bundle(store)) is None  # 400 items: exact scan suffices
    index_bundle(store, kind="flat", device="cpu", params=IndexParams(text_index_min_items=0))
    bundle = load_bundle(store)
    section = bundle.manifest.text_index
    assert section is not None and section.kind == "ivfpq" and section.recall100 >= 0.95
    assert section.dim == bundle.model.text_emb.shape[1]
    assert all(bundle.manifest.files[f] == h for f, h in section.files.items())
    text_index = load_text_index(bundle)
    assert text_index is not None and text_index.ntotal == len(bundle.item_ids)
    emb = text_rows(bundle, np.arange(len(bundle.item_ids)))
    exact = np.argsort(-(emb[:20] @ emb.T), axis=1, kind="stable")[:, :10]
    got = text_index.search(emb[:20], 50)[1]
    assert np.mean([len(set(e) & set(g)) / 10 for e, g in zip(exact, got, strict=True)]) >= 0.95
    # an upsert adds the new item's text to the search index; a removal takes it out
    like = bundle.items.iloc[3]
    add_items(
        store,
        [{"item_id": "text-new", **{c: str(like[c]) + " sequel" for c in bundle.text_columns}}],
        device="cpu",
    )
    grown = load_bundle(store)
    row = len(grown.item_ids) - 1
    grown_text = load_text_index(grown)
    assert grown_text is not None and grown_text.ntotal == len(grown.item_ids)
    assert row in grown_text.search(text_rows(grown, [row]), 5)[1][0]
    remove_items(store, ["text-new"])
    gone = load_text_index(load_bundle(store))
    assert gone is not None and row not in gone.search(text_rows(grown, [row]), 50)[1][0]
    assert row in gone.removed
    # a full rebuild with the default threshold drops it again
    index_bundle(store, kind="flat", device="cpu")
    assert load_bundle(store).manifest.text_index is None
