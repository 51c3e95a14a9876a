"""A movie held out of training, added through the API by its text, reaches the shoppers
whose history matches it — on real MovieLens-100k, through POST /v1/items."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from indexer.publish import index_bundle
from model_store.config import Config
from model_store.data import movielens
from model_store.data.dataset import load_dataset
from model_store.evaluation.protocols import without_items
from model_store.training.pipeline import train_and_publish
from tests.helpers.servers import AUTH, make_settings

HELD_OUT = "181"  # Return of the Jedi (1983)
STAR_WARS, EMPIRE = "50", "172"  # Star Wars (1977), The Empire Strikes Back (1980)


def test_a_held_out_movie_added_by_text_is_recommended_to_its_fans(
    data_movielens_raw: Path, tmp_path: Path
) -> None:
    """The default recipe puts it in the fans' top 20 (the recipe before issue 17, the text
    projection alone, buried every new item at ranks 239–257)."""
    ds = load_dataset(movielens.write_dataset(data_movielens_raw, tmp_path / "ml"))
    row = ds.items[ds.items["item_id"] == HELD_OUT].iloc[0]
    assert row["title"] == "Return of the Jedi (1983)"
    raw: dict[str, dict[str, object]] = {"model": {}, "train": {"epochs": 8, "rerank": False}}
    cfg = Config.from_dict(raw)
    store = tmp_path / "store"
    train_and_publish(
        without_items(ds, frozenset({HELD_OUT})),
        cfg,
        store,
        cache_dir=movielens.default_cache_dir(),
    )
    index_bundle(store, device="cpu")
    fans = {"history": [STAR_WARS, EMPIRE], "k": 20}
    with TestClient(create_app(make_settings(store))) as client:
        before = client.post("/v1/recommend", json=fans).json()
        assert before["unknown_items"] == [] and HELD_OUT not in {
            i["item_id"] for i in before["items"]
        }
        item = {c: str(row[c]) for c in ds.text_columns}
        r = client.post("/v1/items", headers=AUTH, json={"items": [{"item_id": HELD_OUT, **item}]})
        assert r.status_code == 200 and r.json()["added"] == [HELD_OUT], r.text
        assert client.get(f"/v1/items/{HELD_OUT}").json()["trained"] is False
        after = client.post("/v1/recommend", json=fans).json()
        ranked = [i["item_id"] for i in after["items"]]
        assert HELD_OUT in ranked, ranked
        # a shopper of something else entirely does not get it pushed to the top
        other = client.post("/v1/recommend", json={"history": ["1", "71", "95"], "k": 5}).json()
        assert HELD_OUT not in {i["item_id"] for i in other["items"]}
