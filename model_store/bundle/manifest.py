"""The typed ``manifest.json`` of a bundle; read and written only through ``model_store.bundle.io``.

Sections, in the order a bundle gains them:

* identity — ``format``, ``version``, ``created_at``, ``parent_version``, ``libraries``;
* training — ``config`` (the model is rebuilt from it), ``data``, ``dims``, ``item_vocab_hash``,
  ``text_model`` (how the catalog's text embeddings were made, so new items are encoded the
  same way), ``metrics``, ``rerank``;
* indexing — ``index`` (the FAISS index over item vectors) and ``text_index`` (an ANN index
  over text embeddings for search, large catalogs only);
* catalog updates — ``catalog`` (counts after item upserts and removals);
* ``files`` — the sha256 of every file in the version directory.

Keys containing ``@`` (``recall@10``) are field aliases: the JSON keeps the metric names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from model_store.config import Config

FORMAT = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataInfo(_Section):
    fingerprint: str
    source: str
    n_users: int
    n_items: int
    n_interactions: int
    text_columns: list[str]
    holdout: bool
    # the training data cut: the newest interaction timestamp of the data trained on (None
    # in bundles made before it was recorded); a retrain's gate holds out only later events
    last_event_timestamp: float | None = None
    # filterable columns besides the text ones, typed by the dataset (model_store.data.attributes)
    attributes: dict[str, Literal["text", "number", "bool"]] = Field(default_factory=dict)


class Dims(_Section):
    text: int
    model: int
    vector: int


class TextModelInfo(_Section):
    name: str
    mode: Literal["frozen", "lora"]
    max_length: int
    precision: Literal["fp32", "bf16", "fp16"]


class TrainMetrics(_Section):
    valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    batch_size: int
    train_seconds: float
    seconds_to_best: float
    seconds_per_epoch: float
    history: list[dict[str, float]]


class RerankInfo(_Section):
    """Whether the fusion head reranks, and the cross-fitted figures that decided it."""

    enabled: bool
    reason: str
    valid_ndcg10_retrieval: float | None = Field(None, alias="valid_ndcg@10_retrieval")
    valid_ndcg10_with_head: float | None = Field(None, alias="valid_ndcg@10_with_head")
    examples: int | None = None
    # the paired gain (with head − retrieval) of per-user NDCG@10 and its 95 % bootstrap
    # interval; the head is kept only when the interval lies above zero
    valid_ndcg10_gain: float | None = Field(None, alias="valid_ndcg@10_gain")
    valid_ndcg10_gain_lo: float | None = Field(None, alias="valid_ndcg@10_gain_lo")
    valid_ndcg10_gain_hi: float | None = Field(None, alias="valid_ndcg@10_gain_hi")
    # the head's serving cost: µs per request of the served rerank (features + head) over
    # ``model.rerank_candidates`` candidates, on the training device, at batch 1 and 32
    cost_us_batch1: float | None = None
    cost_us_batch32: float | None = None


class ColdInfo(_Section):
    """Whether the cold tower was trained (``model_store.training.coldstart``), and how."""

    enabled: bool
    reason: str
    epochs: int = 0
    rate: float = 0.0
    loss: list[float] = Field(default_factory=list)
    seconds: float = 0.0
    # the calibrated cold_offset, and the top-20 shares it matched (coldstart.calibrate_offset)
    offset: float | None = None
    share_trained: float | None = None
    share_cold: float | None = None


class _KindParams(BaseModel):
    # keys that older versions wrote (hnsw's "metric") are ignored, so their stores still load
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class FlatParams(_KindParams):
    """``flat``: exact search, nothing to tune."""


class HnswParams(_KindParams):
    """``hnsw``: graph links per node, build and search breadth, and the norm every vector is
    augmented to (``indexer.hnsw``). The JSON keeps FAISS's names (``M``, ``efSearch``)."""

    m: int = Field(alias="M")
    ef_construction: int = Field(alias="efConstruction")
    ef_search: int = Field(alias="efSearch")
    radius: float


class IvfPqParams(_KindParams):
    """``ivfpq``: inverted lists, lists probed per query, PQ sub-quantizers and their bits."""

    nlist: int
    nprobe: int
    pq_m: int
    pq_nbits: int


KindParams = FlatParams | HnswParams | IvfPqParams
PARAMS_OF_KIND: dict[str, type[FlatParams] | type[HnswParams] | type[IvfPqParams]] = {
    "flat": FlatParams,
    "hnsw": HnswParams,
    "ivfpq": IvfPqParams,
}


def index_params(kind: str, raw: Mapping[str, Any]) -> KindParams:
    """The typed parameters of an index of ``kind`` from their JSON form."""
    return PARAMS_OF_KIND[kind].model_validate(raw)


class IndexInfo(_Section):
    """An index's kind, tuned parameters, size, measured recall and files."""

    kind: Literal["flat", "hnsw", "ivfpq"]
    params: KindParams
    n_vectors: int
    dim: int
    tombstones: int = 0
    removed: int = 0
    memory_bytes: int = 0
    files: dict[str, str]
    recall10: float = Field(alias="recall@10")
    recall100: float = Field(alias="recall@100")
    recall_floor: float
    recall_queries: int
    recall_query_source: str
    build_seconds: float
    encode_seconds: float | None = None
    build_and_tune_seconds: float | None = None
    rebuilds: int = 0
    built_from_version: str | None = None
    requested_kind: str | None = None
    updates_since_build: int = 0
    update_log: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("params", mode="before")
    @classmethod
    def _params_of_kind(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON parameters are read as the model of the section's kind (not guessed from
        their keys)."""
        kind = info.data.get("kind")
        if isinstance(value, Mapping) and kind in PARAMS_OF_KIND:
            return index_params(kind, value)
        return value

    @model_validator(mode="after")
    def _params_match_kind(self) -> IndexInfo:
        if not isinstance(self.params, PARAMS_OF_KIND[self.kind]):
            raise ValueError(f"{self.kind} index with {type(self.params).__name__}")
        return self


class GateInfo(_Section):
    """The quality gate of ``fusionrec retrain`` (fusionrec.retrain): both figures on the
    same time-based holdout, the paired difference and what was decided."""

    decision: Literal["published", "refused"]
    metric: str
    margin: float
    candidate: float
    current: float
    diff_mean: float
    diff_lo: float
    diff_hi: float
    users: int
    cut_timestamp: float
    holdout_fraction: float
    compared_with: str
    events: int
    # CURRENT's training data cut the holdout started after (None: the plain rule, for a
    # CURRENT without one) and when the round read the forgotten users and the log
    current_data_cut: float | None = None
    snapshot_at: float | None = None


class CatalogInfo(_Section):
    n_items: int
    n_removed: int
    n_added_after_training: int
    n_text_only: int


class Manifest(_Section):
    format: Literal[2] = 2
    version: str
    created_at: str
    parent_version: str | None = None
    libraries: dict[str, str]
    config: Config
    data: DataInfo
    dims: Dims
    item_vocab_hash: str
    text_model: TextModelInfo
    metrics: TrainMetrics
    rerank: RerankInfo
    cold: ColdInfo
    index: IndexInfo | None = None
    text_index: IndexInfo | None = None
    catalog: CatalogInfo | None = None
    # the catalog table's sequence this bundle's catalog includes (model_store.catalog.table)
    catalog_seq: int = 0
    gate: GateInfo | None = None
    files: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
