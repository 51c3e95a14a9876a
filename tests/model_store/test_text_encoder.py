"""The text encoder loads offline and matches a direct transformers forward pass."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from model_store.text_encoder import TextEncoder, resolve_model_path

TEXTS = [
    "title: Toy Story (1995)\ngenres: Animation|Children's|Comedy",
    "a much longer description of a science fiction film about space travel " * 3,
    "short",
]


def test_same_embedding_as_direct_transformers_forward() -> None:
    enc = TextEncoder(device="cpu")
    got = enc.encode(TEXTS, batch_size=2)  # length-sorted, dynamically padded batches
    path = resolve_model_path("all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    for text, vec in zip(TEXTS, got, strict=True):
        batch = tok([text], return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        ref = hidden.mean(0)
        ref = (ref / ref.norm()).numpy()
        np.testing.assert_allclose(vec, ref, atol=2e-5)
    assert got.shape == (3, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_loads_with_hub_offline() -> None:
    code = (
        "from model_store.text_encoder import TextEncoder;"
        "e = TextEncoder(device='cpu'); print(e.encode(['hello']).shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "(1, 384)" in out.stdout
