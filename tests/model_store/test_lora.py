"""text.mode=lora: the LM is tuned jointly, and the tuned LM travels with the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from model_store.bundle.io import load_bundle
from model_store.catalog.changes import prepare_change
from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.data.movielens import default_cache_dir
from model_store.text.encoder import TextEncoder
from model_store.text.lora import load_tuned_encoder
from model_store.training.pipeline import train_and_publish


def small_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    genres = ["space opera", "romantic comedy", "murder mystery", "cooking show"]
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(40)],
            "title": [f"{genres[k % 4]} number {k}" for k in range(40)],
        }
    )
    rows = []
    for u in range(30):
        g = u % 4
        for t in range(12):
            rows.append((f"u{u}", f"i{4 * int(rng.integers(0, 10)) + g}", t))
    root.mkdir()
    items.to_csv(root / "items.csv", index=False)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        root / "interactions.csv", index=False
    )
    return root


def test_lora_bundle_encodes_with_its_tuned_lm(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "d")
    cfg = Config()
    cfg.text.mode = "lora"
    cfg.text.batch_size = 16
    cfg.model.dim, cfg.model.max_len = 16, 8
    cfg.train.epochs, cfg.train.rerank, cfg.train.batch_size = 2, False, 16
    path, _ = train_and_publish(
        load_dataset(data), cfg, tmp_path / "store", cache_dir=default_cache_dir()
    )
    assert (path / "text_adapter.safetensors").exists()
    bundle = load_bundle(tmp_path / "store")
    texts = load_dataset(data).item_texts()[:6]
    tuned_lm = TextEncoder(
        device="cpu", precision="fp32", transformer=load_tuned_encoder(cfg.text.model, path)
    )
    tuned = tuned_lm.encode(texts)
    base = TextEncoder(device="cpu", precision="fp32").encode(texts)
    stored = bundle.model.text_emb[1:7].numpy()
    # the bundle's cached embeddings are the tuned LM's, not the base model's
    assert np.allclose(tuned, stored, atol=1e-4)
    assert np.abs(base - stored).max() > 1e-4
    # new items go through the same tuned LM
    new = prepare_change(
        bundle, [{"item_id": "x", "title": "space opera number 99"}], device="cpu"
    ).text_emb
    ref = tuned_lm.encode(["title: space opera number 99"])
    assert np.allclose(new, ref, atol=1e-4)
