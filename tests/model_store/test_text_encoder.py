"""The text encoder loads offline and matches a direct transformers forward pass."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from model_store.errors import ConfigError
from model_store.text.encoder import TextEncoder
from model_store.text.lm import cpu_has_native_bf16, resolve_model_path, resolve_precision

TEXTS = [
    "title: Toy Story (1995)\ngenres: Animation|Children's|Comedy",
    "a much longer description of a science fiction film about space travel " * 3,
    "short",
]


def test_same_embedding_as_direct_transformers_forward() -> None:
    enc = TextEncoder(device="cpu", precision="fp32")
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


def test_bf16_autocast_stays_close_to_fp32() -> None:
    fp32 = TextEncoder(device="cpu", precision="fp32").encode(TEXTS, batch_size=2)
    bf16_enc = TextEncoder(device="cpu", precision="bf16")
    bf16 = bf16_enc.encode(TEXTS, batch_size=2)
    assert bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cos = np.sum(fp32 * bf16, axis=1)
    assert cos.min() > 0.999, cos
    assert not np.array_equal(fp32, bf16)  # the bf16 path really ran
    # the same text gives the same vector whatever batch it lands in
    alone = bf16_enc.encode(TEXTS[:1])
    assert float(alone[0] @ bf16[0]) > 0.9999


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="'int4'"):
        resolve_precision("int4", cpu)


def test_loads_with_hub_offline() -> None:
    code = (
        "from model_store.text.encoder import TextEncoder;"
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
