"""Runtime settings of the service: one ``Settings`` per process, built once and injected.

Every field is read from the environment with the prefix ``FUSIONREC_`` (``FUSIONREC_STORE``,
``FUSIONREC_ADMIN_TOKEN`` …); the Redis URL is also read from plain ``REDIS_URL``. Model
hyper-parameters are not here: they live inside the bundle (``model_store.config``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store.events.log import DEFAULT_EVENT_TYPES, event_types

MIB = 1 << 20
DAY = 86_400
# fields whose value never appears in a message (the Redis URL may carry a password)
SECRET_FIELDS = frozenset({"admin_token", "api_keys", "user_key_secret", "redis_url"})
_URL_PASSWORD = re.compile(r"(//[^:/@\s]*:)[^@/\s]+@")


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
    events_url: str | None = Field(
        default=None,
        description="the event log: sqlite:///path.db or postgresql+psycopg://user@host/db; "
        "unset = SQLite at <store>/events.db; 'off' = no log",
    )
    event_types: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_TYPES),
        description="accepted event types and their training weights (JSON); a negative "
        "weight is negative feedback: the item is hidden from that shopper",
    )
    events_max_pending: int = Field(20_000, ge=1, description="events waiting for the log")
    events_spool_max_bytes: int = Field(
        256 * MIB, ge=1024, description="spool (events kept on disk while the log is down)"
    )
    follow_poll_s: float = Field(
        2.0,
        ge=0,
        description="seconds between reads of the store's CURRENT pointer; a new version is "
        "loaded by itself (a Redis pub/sub message makes it immediate); 0 = only on "
        "POST /admin/reload",
    )
    search_mode: Literal["dense", "hybrid"] = Field(
        "dense", description="search when a request names no `mode`: dense, or dense + BM25"
    )
    search_min_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="hybrid search's relevance floor: a result needs a lexical match or a "
        "query-text cosine at least this (a nonsense query returns nothing)",
    )
    # one thread per worker: small requests lose more to intra-op sync than they gain
    torch_threads: int | None = Field(1, ge=1, description="None = torch's default")
    faiss_threads: int | None = Field(1, ge=1, description="None = all cores")
    # ---- privacy and safe defaults (README, section Security) ----
    user_key_secret: SecretStr | None = Field(
        None,
        description="HMAC key of user ids (16+ characters); unset = a random key generated "
        "once and kept in STORE/.private/user_key (mode 0600). Every replica needs the same",
    )
    allow_anonymous_writes: bool = Field(
        False,
        description="accept POST /v1/events and DELETE /v1/users/* without an API key "
        "(only when FUSIONREC_API_KEYS is unset); off by default",
    )
    auth_fail_rps: float = Field(
        0.2, ge=0, description="failed credential attempts refilled per second per client; 0 = off"
    )
    auth_fail_burst: int = Field(10, ge=1, description="failed attempts before 429")
    history_ttl_s: int = Field(
        30 * DAY, ge=0, description="a history expires this long after its last event; 0 = never"
    )
    history_max_bytes: int = Field(
        256 * MIB, ge=MIB, description="byte budget of the in-process histories (LRU eviction)"
    )
    history_max_pending_users: int = Field(
        100_000,
        ge=1,
        description="users whose events wait for Redis to come back; one more answers 503",
    )
    cache_max_bytes: int = Field(
        256 * MIB, ge=MIB, description="byte budget of the in-process vector cache"
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send its request headers within this"
    )
    http_max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="request line + headers larger than this: 431, closed"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this after its headers"
    )
    http_keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections closed")
    forwarded_allow_ips: str | None = Field(
        None,
        description="proxies trusted for X-Forwarded-For (comma-separated IPs/networks, or *): "
        "then the client address of rate limits is the one the proxy saw; unset = none",
    )
    http_limit_concurrency: int = Field(
        2048, ge=1, description="open connections + tasks before uvicorn answers 503"
    )
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

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: dict[str, float]) -> dict[str, float]:
        return event_types(value)

    @field_validator("events_url")
    @classmethod
    def _events_scheme(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if value != "off" and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError(
                "FUSIONREC_EVENTS_URL must be sqlite:///path.db, postgresql+psycopg://… or off"
            )
        return value

    def events_log_url(self) -> str | None:
        if self.events_url == "off":
            return None
        return self.events_url or f"sqlite:///{self.store.resolve() / 'events.db'}"

    @field_validator("user_key_secret")
    @classmethod
    def _strong_user_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("FUSIONREC_USER_KEY_SECRET must be at least 16 characters")
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


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` URL replaced."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def settings_error_message(exc: ValidationError) -> str:
    """One line per invalid setting: its variable, what is wrong and, for settings that
    are not secret, the value given (pydantic's own text echoes every input)."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else ""
        var = f"FUSIONREC_{name.upper()}" if name else "settings"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got: Any = err.get("input")
        shown = ""
        if name and name not in SECRET_FIELDS and not isinstance(got, (dict, list)):
            shown = f" (got {redact_url(repr(got))[:80]})"
        lines.append(f"{var}: {redact_url(msg)}{shown}")
    return "\n".join(lines)
