"""Runtime settings of the service: one ``Settings`` per process, built once and injected.

Every field is read from the environment with the prefix ``FUSIONREC_`` (``FUSIONREC_STORE``,
``FUSIONREC_ADMIN_TOKEN`` …); the Redis URL is also read from plain ``REDIS_URL``. Model
hyper-parameters are not here: they live inside the bundle (``model_store.config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1 << 20


class Settings(BaseSettings):
    """The service's runtime configuration (see the README settings table)."""

    model_config = SettingsConfigDict(
        env_prefix="FUSIONREC_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    store: Path = Field(description="store root holding the published bundles and CURRENT")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FUSIONREC_REDIS_URL", "REDIS_URL", "redis_url"),
        description="redis://host:port/db; unset = in-process LRU cache and history store",
    )
    redis_timeout_s: float = Field(0.05, gt=0, le=5)
    breaker_failures: int = Field(3, ge=1, description="consecutive Redis errors that open it")
    breaker_reset_s: float = Field(5.0, gt=0, description="seconds before a half-open probe")
    admin_token: SecretStr | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    rate_limit_rps: float = Field(100.0, ge=0, description="per-client refill rate; 0 = off")
    rate_limit_burst: int = Field(200, ge=1)
    max_body_bytes: int = Field(MIB, ge=1024)
    candidates: int = Field(200, ge=1, le=10_000, description="FAISS top-N before rerank")
    cache_ttl_s: int = Field(3600, ge=1)
    cache_size: int = Field(100_000, ge=1, description="in-process LRU entries")
    history_max_len: int = Field(200, ge=1, description="events kept per user")
    history_drain_s: float = Field(
        10.0,
        ge=0,
        description="at shutdown, how long to keep retrying the write-back of "
        "events accepted while Redis was unavailable (compose's stop grace period is 15 s)",
    )
    batch_max_size: int = Field(64, ge=1, le=4096, description="micro-batch size; 1 = off")
    # 0 = no waiting: a batch is whatever queued while the worker was busy (under load
    # batches still form; alone, a request is not delayed)
    batch_max_wait_ms: float = Field(0.0, ge=0, le=100)
    search_user_weight: float = Field(0.3, ge=0, le=1, description="β of the search blend")
    # one thread per worker: small requests lose more to intra-op sync than they gain
    torch_threads: int | None = Field(1, ge=1, description="None = torch's default")
    faiss_threads: int | None = Field(1, ge=1, description="None = all cores")
    demo: bool = Field(True, description="serve the demo storefront page at /demo")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "FUSIONREC_ADMIN_TOKEN must be at least 16 characters "
                "(leave it unset to disable the admin endpoints)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _store_exists(self) -> Settings:
        if not self.store.is_dir():
            raise ValueError(f"FUSIONREC_STORE={self.store} is not a directory")
        return self
