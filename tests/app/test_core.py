"""Component tests of the service core: each part built directly (no HTTP, no app) over a
tiny real bundle and real in-process stores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.catalog import Catalog
from app.core.lookup import Lookup
from app.core.reading import Reading
from app.core.shoppers import Shoppers, erasable_stores
from app.core.snapshot import SnapshotHolder
from app.history import LocalHistory
from app.keys import negative_key, user_vector_key
from app.metrics import Metrics
from app.schemas import (
    EventIn,
    ItemIn,
    ItemPatch,
    ItemsBatchGet,
    ItemsUpsert,
    RecommendRequest,
    SearchRequest,
    SimilarRequest,
)
from app.settings import BatchingSettings, RuntimeSettings, SearchSettings
from app.vector_cache import LocalLRU, VectorCache
from model_store.bundle import store as store_mod
from model_store.catalog.table import CatalogStore
from model_store.catalog.writes import default_url
from model_store.errors import (
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    PreconditionFailedError,
    ReloadRefusedError,
)
from model_store.privacy import FileTombstones, Privacy, user_key
from model_store.privacy.tombstones import read_tombstones
from tests.helpers.bundles import clone_version, trained_users


@dataclass
class Parts:
    holder: SnapshotHolder
    reading: Reading
    catalog: Catalog
    shoppers: Shoppers
    history: LocalHistory
    cache: VectorCache
    metrics: Metrics


def build(store: Path) -> Parts:
    """The core's parts wired by hand, as ``app.main.build_core`` does without Redis."""
    metrics = Metrics()
    holder = SnapshotHolder(store=store, device="cpu", metrics=metrics)
    history = LocalHistory(50)
    cache = VectorCache(LocalLRU(1000, 3600), None, 3600)
    privacy = Privacy(
        key=user_key(store),  # the key the bundle's histories are hashed with
        tombstones=FileTombstones(store),
        stores=erasable_stores(cache=cache, history=history, event_log=None),
    )
    lookup = Lookup(history=history, cache=cache, privacy=privacy, metrics=metrics)
    reading = Reading(
        snapshots=holder,
        lookup=lookup,
        metrics=metrics,
        runtime=RuntimeSettings(device="cpu"),
        batching=BatchingSettings(),
        search=SearchSettings(),
    )
    shoppers = Shoppers(
        snapshots=holder,
        lookup=lookup,
        privacy=privacy,
        event_log=None,
        event_types={"view": 1.0, "dislike": -1.0},
    )
    catalog = Catalog(snapshots=holder, store=CatalogStore(default_url(store)))
    return Parts(holder, reading, catalog, shoppers, history, cache, metrics)


@pytest.fixture
def parts(store: Path) -> Iterator[Parts]:
    p = build(store)
    p.holder.start()
    p.reading.start()
    try:
        yield p
    finally:
        p.reading.stop()


def _counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _bundle_user(store: Path) -> tuple[str, list[str]]:
    """A raw user id with at least 3 trained items (the bundle holds their hashes)."""
    return next((u, h) for u, h in trained_users(store).items() if len(h) >= 3)


def test_reading_answers_a_history_without_http(parts: Parts) -> None:
    snap = parts.holder.ready()
    history = snap.bundle.item_ids[:4]
    request = RecommendRequest(history=[*history, "no-such-item"], k=5, fields=["title"])
    answer = asyncio.run(parts.reading.recommend(request=request))
    assert answer.strategy == "personalized" and answer.model_version == snap.version
    assert len(answer.items) == 5 and answer.unknown_items == ["no-such-item"]
    assert not {i.item_id for i in answer.items} & set(history)  # seen items excluded
    assert all(i.fields is not None and "title" in i.fields for i in answer.items)
    # the same history again: the vector comes from the cache
    asyncio.run(parts.reading.recommend(request=request))
    assert _counter(parts.metrics, "fusionrec_user_vector_cache_total", result="hit") == 1
    cold = asyncio.run(parts.reading.recommend(request=RecommendRequest(k=3)))
    assert cold.strategy == "cold_start" and len(cold.items) == 3


def test_reading_filters_once_and_reports_unknown_items(parts: Parts) -> None:
    snap = parts.holder.ready()
    category = str(snap.bundle.items["category"].iloc[0])
    request = SimilarRequest(k=4, filter={"category": {"eq": category}}, fields=["category"])
    answer = asyncio.run(parts.reading.similar(item_id=snap.bundle.item_ids[0], request=request))
    assert answer.items and all(i.fields == {"category": category} for i in answer.items)
    with pytest.raises(InvalidInputError, match="category"):
        asyncio.run(
            parts.reading.recommend(request=RecommendRequest(k=3, filter={"nope": {"eq": 1}}))
        )
    with pytest.raises(NotFoundError, match="'missing' is not in the catalog"):
        parts.reading.item(item_id="missing")
    found = parts.reading.items(request=ItemsBatchGet(ids=["missing", snap.bundle.item_ids[1]]))
    assert [r.item_id for r in found.items] == [snap.bundle.item_ids[1]]
    assert found.missing == ["missing"]
    # dense: every query gets its nearest items (hybrid, the default, may answer nothing
    # when no word matches and no cosine reaches the relevance floor)
    request = SearchRequest(query="drama", k=3, mode="dense")
    search = asyncio.run(parts.reading.search(request=request))
    assert search.strategy == "search" and len(search.items) == 3


def test_a_repeated_query_reuses_its_embedding(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The language model encodes a query once; the same query again is answered from the
    query cache with the same items and scores."""
    text = parts.holder.ready().text
    assert text is not None
    encoded: list[str] = []
    real = text.encode

    def counting(texts: list[str], **kw: object) -> object:
        encoded.extend(texts)
        return real(texts, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(text, "encode", counting)
    request = SearchRequest(query="comedy", k=5, mode="dense")
    first = asyncio.run(parts.reading.search(request=request))
    again = asyncio.run(parts.reading.search(request=request))
    assert encoded == ["comedy"]
    assert [(i.item_id, i.score) for i in again.items] == [
        (i.item_id, i.score) for i in first.items
    ]
    asyncio.run(parts.reading.search(request=SearchRequest(query="war", k=5, mode="dense")))
    assert encoded == ["comedy", "war"]


def test_catalog_upsert_is_found_by_reading(parts: Parts, store: Path) -> None:
    before = parts.holder.ready().version
    new = ItemIn(item_id="brand-new", title="A brand new item", description="new", category="x")
    result = asyncio.run(parts.catalog.upsert(request=ItemsUpsert(items=[new])))
    assert result.added == ["brand-new"] and result.model_version == before
    assert store_mod.current_version(store) == before  # a row of the table, no bundle copy
    assert result.seq == 1 and parts.holder.ready().catalog_seq == 1  # applied here at once
    version, record = parts.reading.item(item_id="brand-new")
    assert version == result.model_version and record.fields["title"] == "A brand new item"
    assert record.trained is False  # text path only
    hidden = asyncio.run(
        parts.catalog.patch(item_id="brand-new", request=ItemPatch(available=False))
    )
    assert hidden.updated == ["brand-new"] and hidden.versions == {"brand-new": 2}
    with pytest.raises(PreconditionFailedError):  # If-Match of a stale version
        asyncio.run(parts.catalog.delete(item_id="brand-new", if_match=1))
    asyncio.run(parts.catalog.delete(item_id="brand-new"))
    with pytest.raises(NotFoundError):
        parts.reading.item(item_id="brand-new")
    with pytest.raises(NotFoundError, match="'brand-new'"):
        asyncio.run(parts.catalog.delete(item_id="brand-new"))


def test_shoppers_event_then_forget_removes_the_history(parts: Parts, store: Path) -> None:
    user, trained = _bundle_user(store)
    item = parts.holder.ready().bundle.item_ids[7]
    shoppers, privacy = parts.shoppers, parts.shoppers.privacy
    uhash = privacy.user_hash(user)

    async def scenario() -> None:
        # the first event is appended to the bundle's history of the user
        n = await shoppers.add_event(request=EventIn(user_id=user, item_id=item))
        assert n == len(trained) + 1
        assert await parts.history.get(uhash) == [*trained, item][-50:]
        await shoppers.add_event(request=EventIn(user_id=user, item_id=item, type="dislike"))
        assert await parts.history.get(negative_key(uhash)) == [item]
        rec = await parts.reading.recommend(request=RecommendRequest(user_id=user, k=5))
        assert rec.strategy == "personalized" and item not in {i.item_id for i in rec.items}
        assert await parts.cache.get(user_vector_key(uhash), tag=rec.model_version) is not None
        await shoppers.forget_user(user_id=user)
        assert await parts.history.get(uhash) is None
        assert await parts.history.get(negative_key(uhash)) is None
        assert await parts.cache.get(user_vector_key(uhash), tag=rec.model_version) is None
        rec = await parts.reading.recommend(request=RecommendRequest(user_id=user, k=5))
        assert rec.strategy == "cold_start"  # the bundle's history is not used any more
        # a new event starts a new history, not seeded from the bundle
        assert await shoppers.add_event(request=EventIn(user_id=user, item_id=item)) == 1
        with pytest.raises(NotFoundError, match="item_id 'gone'"):
            await shoppers.add_event(request=EventIn(user_id=user, item_id="gone"))
        with pytest.raises(InvalidInputError, match="FUSIONREC_EVENT_TYPES"):
            await shoppers.add_event(request=EventIn(user_id=user, item_id=item, type="buy"))

    asyncio.run(scenario())
    assert read_tombstones(store) == {uhash}  # durable


def test_snapshot_holder_refuses_a_corrupt_bundle_and_keeps_serving(
    parts: Parts, store: Path
) -> None:
    serving = parts.holder.ready().version
    broken = clone_version(store)
    model = next(p for p in (store / broken).iterdir() if p.suffix == ".safetensors")
    model.unlink()  # a new file: the clone's files are hard links to the serving version's
    model.write_bytes(b"not a model")
    with pytest.raises(ReloadRefusedError, match=f"still serving {serving}"):
        asyncio.run(parts.holder.reload())
    assert parts.holder.ready().version == serving
    assert _counter(parts.metrics, "fusionrec_reloads_total", result="refused") == 1
    answer = asyncio.run(parts.reading.recommend(request=RecommendRequest(k=2)))
    assert answer.model_version == serving
    store_mod.set_current(store, serving)
    good = clone_version(store)  # a copy of the one serving, under a new version
    result = asyncio.run(parts.holder.reload())
    assert result.reloaded and result.previous_version == serving
    assert result.model_version == good == parts.holder.ready().version
    assert not asyncio.run(parts.holder.reload()).reloaded  # already serving CURRENT


def test_snapshot_holder_without_a_bundle_is_not_ready(tmp_path: Path) -> None:
    parts = build(tmp_path)
    parts.holder.start()  # no CURRENT: kept for readiness, not raised
    with pytest.raises(NotReadyError, match="CURRENT"):
        parts.holder.ready()
    with pytest.raises(NotReadyError):
        parts.reading.item(item_id="i1")
