"""The language-model text encoder: transformers ``AutoModel`` + mean pooling + L2 norm.

This reproduces sentence-transformers' all-MiniLM-L6-v2 pipeline (Transformer → mean
Pooling → Normalize) with plain transformers, so the trainer, the indexer and the service
share one implementation and no hub access is needed. Texts are encoded in length-sorted
batches with dynamic padding: sorting puts texts of similar length together so each batch
pads only to its own longest text.

The forward runs in reduced precision where the hardware has it natively (``precision``:
fp16 autocast on CUDA, bf16 autocast on CPUs with AVX512-BF16 or AMX) — weights, mean
pooling and normalisation stay fp32. On this project's 2-core AVX512-BF16 machine that is
1.7× the fp32 throughput with a cosine ≥ 0.9999 to the fp32 embedding (docs/BENCHMARKS.md).

One factory: training encodes the catalog with ``load_text_encoder(TextSpec.of_config(..))``;
the indexer and the service call ``text_encoder_for(bundle)``, which reads model name, max
length, precision and the LoRA adapter from the bundle's manifest, so a new item is encoded
exactly as the catalog was.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from model_store.config import DEFAULT_TEXT_MODEL, TextConfig
from model_store.errors import ConfigError
from model_store.text.lm import (
    DTYPES,
    load_encoder,
    load_tokenizer,
    mean_pool,
    pick_device,
    resolve_precision,
)
from model_store.text.lora import ADAPTER_FILE, load_tuned_encoder


class _TextModelRecord(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def max_length(self) -> int: ...
    @property
    def precision(self) -> str: ...


class _ManifestRecord(Protocol):
    @property
    def text_model(self) -> _TextModelRecord: ...
    @property
    def files(self) -> Mapping[str, str]: ...


class EncodedCatalog(Protocol):
    """What the encoder needs of a bundle (``model_store.bundle.io.Bundle``): where it is and
    how its manifest says the catalog was encoded. A protocol, so that the text layer does
    not import the bundle layer above it."""

    @property
    def path(self) -> Path: ...
    @property
    def manifest(self) -> _ManifestRecord: ...


class TextEncoder(nn.Module):
    """A transformers encoder with mean pooling; ``encode`` returns L2-normalised float32.

    ``transformer``: an already built model to use instead of the pretrained one (the
    LoRA-tuned LM of a bundle).
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        *,
        max_length: int = 128,
        device: str = "auto",
        precision: str = "auto",
        transformer: Any | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(model)
        self.model = transformer if transformer is not None else load_encoder(model)
        self.name = model
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.device_ = pick_device(device)
        self.precision = resolve_precision(precision, self.device_)
        self.to(self.device_)
        self.model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return torch.nn.functional.normalize(
            mean_pool(out.last_hidden_state.float(), attention_mask), dim=-1
        )

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Encode ``texts`` → (N, dim) float32, L2-normalised, in the input order."""
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        was_training = self.training
        self.eval()
        # Tokenise once, unpadded; sort by true token length and pad each batch only to its
        # own longest text (no second tokenisation pass).
        ids = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        pad_id = int(self.tokenizer.pad_token_id or 0)
        dtype = DTYPES.get(self.precision)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx[0]])
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : lengths[i]] = ids[i]
                mask[row, : lengths[i]] = 1
            with torch.autocast(
                self.device_.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                emb = self(
                    torch.from_numpy(input_ids).to(self.device_),
                    torch.from_numpy(mask).to(self.device_),
                )
            out[idx] = emb.float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
        self.train(was_training)
        return out


@dataclass(frozen=True)
class TextSpec:
    """Everything that decides an item's text embedding besides its text."""

    name: str
    max_length: int
    precision: str  # "auto" or what a bundle recorded
    adapter_dir: Path | None = None  # a bundle trained with text.mode = lora
    adapter_sha: str | None = None

    @classmethod
    def of_config(cls, text: TextConfig) -> TextSpec:
        return cls(text.model, text.max_length, text.precision)

    @classmethod
    def of_bundle(cls, bundle: EncodedCatalog) -> TextSpec:
        tm = bundle.manifest.text_model
        sha = bundle.manifest.files.get(ADAPTER_FILE)
        return cls(tm.name, tm.max_length, tm.precision, bundle.path if sha else None, sha)

    def precision_on(self, device: torch.device) -> str:
        """The precision to encode with on ``device``: the recorded one, except that an fp16
        (GPU) catalog encoded on a CPU takes the CPU's best."""
        if self.precision == "fp16" and device.type != "cuda":
            return resolve_precision("auto", device)
        return resolve_precision(self.precision, device)


_LOADED: dict[tuple[str, int, str, str, str | None], TextEncoder] = {}
_LOCK = threading.Lock()


def load_text_encoder(spec: TextSpec, device: str = "auto") -> TextEncoder:
    """The encoder of ``spec`` on ``device``, loaded once per process (≈90 MB for MiniLM);
    bundles sharing a LoRA adapter (same sha256) share one copy."""
    dev = pick_device(device)
    precision = spec.precision_on(dev)
    key = (spec.name, spec.max_length, str(dev), precision, spec.adapter_sha)
    with _LOCK:
        if key not in _LOADED:
            transformer = None
            if spec.adapter_dir is not None:
                transformer = load_tuned_encoder(spec.name, spec.adapter_dir)
            _LOADED[key] = TextEncoder(
                spec.name,
                max_length=spec.max_length,
                device=str(dev),
                precision=precision,
                transformer=transformer,
            )
        return _LOADED[key]


def text_encoder_for(bundle: EncodedCatalog, device: str = "auto") -> TextEncoder:
    """The text encoder that made ``bundle``'s catalog embeddings (for queries, new items)."""
    return load_text_encoder(TextSpec.of_bundle(bundle), device)


def text_embeddings(
    texts: list[str],
    spec: TextSpec,
    *,
    device: str = "auto",
    batch_size: int = 128,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embeddings (N, T) of ``texts``; cached on disk by (model, max length, precision, texts)."""
    if spec.adapter_dir is not None:
        raise ConfigError("cached catalog embeddings are made with the pretrained LM only")
    precision = spec.precision_on(pick_device(device))
    h = hashlib.sha256(f"{spec.name}|{spec.max_length}|{precision}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = cache_dir / "text" / f"{h.hexdigest()[:32]}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.asarray(np.load(path), dtype=np.float32)
    encoder = load_text_encoder(spec, device)
    emb = encoder.encode(texts, batch_size=batch_size, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb
