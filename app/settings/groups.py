"""The groups of settings, each handed whole to the part of the service that uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

from model_store.database import redact
from model_store.errors import ConfigError
from model_store.events.log import DEFAULT_EVENT_TYPES, event_types

MIB = 1 << 20
DAY = 86_400
PLAIN_REDIS_URL = "REDIS_URL"  # also read without the prefix (docker-compose, PaaS add-ons)


class SettingsGroup(BaseModel):
    """One group of settings, handed whole to the part that uses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSettings(SettingsGroup):
    """Where and how the model work runs in this process."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    candidates: int = Field(200, ge=1, le=10_000, description="FAISS top-N before rerank")
    # one thread per worker: small requests lose more to intra-op sync than they gain
    torch_threads: int | None = Field(1, ge=1, description="None = torch's default")
    faiss_threads: int | None = Field(1, ge=1, description="None = all cores")
    rerank: Literal["bundle", "on", "off"] = Field(
        "bundle",
        description="the fusion head: as the bundle chose (bundle), forced on or off",
    )


class BatchingSettings(SettingsGroup):
    """The micro-batchers of user vectors and queries."""

    max_size: int = Field(64, ge=1, le=4096, description="micro-batch size; 1 = off")
    # 0 = no waiting: a batch is whatever queued while the worker was busy (under load
    # batches still form; alone, a request is not delayed)
    max_wait_ms: float = Field(0.0, ge=0, le=100)


class HttpSettings(SettingsGroup):
    """Limits of the HTTP server and its request bodies."""

    max_body_bytes: int = Field(MIB, ge=1024)
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send its request headers within this"
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="request line + headers larger than this: 431, closed"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this after its headers"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections closed")
    limit_concurrency: int = Field(
        2048, ge=1, description="open connections + tasks before uvicorn answers 503"
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="proxies trusted for X-Forwarded-For (comma-separated IPs/networks, or *): "
        "then the client address of rate limits is the one the proxy saw; unset = none",
    )
    access_log: Literal["off", "json"] = Field(
        "off", description="per-request log: off, or one JSON line per request on stdout"
    )
    access_log_sample: float = Field(
        1.0, gt=0, le=1, description="the fraction of requests the access log writes"
    )


class RedisSettings(SettingsGroup):
    """The shared Redis (cache, histories, tombstones, pub/sub) behind a circuit breaker."""

    url: str | None = Field(
        default=None,
        # the key names the variable the value came from, so an error can name it
        validation_alias=AliasChoices("url", PLAIN_REDIS_URL),
        description="redis://host:port/db; unset = in-process LRU cache and history store",
    )
    timeout_s: float = Field(0.05, gt=0, le=5)
    breaker_failures: int = Field(3, ge=1, description="consecutive Redis errors that open it")
    breaker_reset_s: float = Field(5.0, gt=0, description="seconds before a half-open probe")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class CacheSettings(SettingsGroup):
    """The user-vector cache (Redis when configured, else in process)."""

    ttl_s: int = Field(3600, ge=1)
    size: int = Field(100_000, ge=1, description="in-process LRU entries")
    max_bytes: int = Field(256 * MIB, ge=MIB, description="byte budget of the in-process cache")


class HistorySettings(SettingsGroup):
    """Server-side histories of shoppers."""

    max_len: int = Field(200, ge=1, description="events kept per user")
    max_user_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="bytes of item ids kept per user besides max_len (oldest dropped first; "
        "a history of long ids is bounded in Redis too)",
    )
    ttl_s: int = Field(
        30 * DAY, ge=0, description="a history expires this long after its last event; 0 = never"
    )
    max_bytes: int = Field(
        256 * MIB, ge=MIB, description="byte budget of the in-process histories (LRU eviction)"
    )
    max_pending_users: int = Field(
        100_000,
        ge=1,
        description="users whose events wait for Redis to come back; one more answers 503",
    )
    drain_s: float = Field(
        10.0,
        ge=0,
        description="at shutdown, how long to keep retrying the write-back of "
        "events accepted while Redis was unavailable (compose's stop grace period is 15 s)",
    )


class EventSettings(SettingsGroup):
    """The durable event log and the accepted event types."""

    url: str | None = Field(
        default=None,
        description="the event log: sqlite:///path.db or postgresql+psycopg://user@host/db; "
        "unset = SQLite at <store>/events.db; 'off' = no log",
    )
    types: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_TYPES),
        description="accepted event types and their training weights (JSON); a negative "
        "weight is negative feedback: the item is hidden from that shopper",
    )
    max_pending: int = Field(20_000, ge=1, description="events waiting for the log")
    spool_max_bytes: int = Field(
        256 * MIB, ge=1024, description="spool (events kept on disk while the log is down)"
    )

    @field_validator("types", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        example = 'a JSON object such as {"view": 1, "purchase": 5}'
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"must be {example}") from None
        if not isinstance(value, dict):
            raise ValueError(f"must be {example}")
        return value

    @field_validator("types")
    @classmethod
    def _types(cls, value: dict[str, float]) -> dict[str, float]:
        try:
            return event_types(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("event types: ")) from None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if value.startswith("postgres://"):  # PostgreSQL's own short scheme
            value = "postgresql" + value.removeprefix("postgres")
        if value != "off" and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError(
                "must be sqlite:///path.db, postgresql://user@host/db "
                f"(or postgresql+psycopg://…) or off, not {redact(value)[:80]!r}"
            )
        return value

    def log_url(self, store: Path) -> str | None:
        """The log's URL (SQLite in ``store`` by default), or None when the log is off."""
        if self.url == "off":
            return None
        return self.url or f"sqlite:///{store.resolve() / 'events.db'}"


class SearchSettings(SettingsGroup):
    """Search defaults."""

    user_weight: float = Field(0.3, ge=0, le=1, description="β of the search blend")
    mode: Literal["dense", "hybrid"] = Field(
        "hybrid", description="search when a request names no `mode`: dense, or dense + BM25"
    )
    min_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="hybrid search's relevance floor: a result needs a lexical match or a "
        "query-text cosine at least this (a nonsense query returns nothing)",
    )
    query_cache: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="query embeddings kept per replica (LRU, ~1.7 KB each): a repeated query "
        "skips the language model (~12 ms on one CPU thread); 0 = off",
    )


class FollowSettings(SettingsGroup):
    """How a replica follows the store's CURRENT."""

    poll_s: float = Field(
        2.0,
        ge=0,
        description="seconds between reads of the store's CURRENT pointer; a new version is "
        "loaded by itself (a Redis pub/sub message makes it immediate); 0 = only on "
        "POST /admin/reload",
    )


class SecuritySettings(SettingsGroup):
    """Credentials, rate limits and the privacy key (README, section Security)."""

    admin_token: SecretStr | None = None
    api_keys: list[SecretStr] = Field(default_factory=list)
    rate_limit_rps: float = Field(100.0, ge=0, description="per-client refill rate; 0 = off")
    rate_limit_burst: int = Field(200, ge=1)
    auth_fail_rps: float = Field(
        0.2, ge=0, description="failed credential attempts refilled per second per client; 0 = off"
    )
    auth_fail_burst: int = Field(10, ge=1, description="failed attempts before 429")
    user_events_per_minute: int = Field(
        600,
        ge=0,
        description="events accepted per user id a minute, per replica, whatever key or "
        "address posts them (a guard against fake shoppers); more: 429; 0 = off",
    )
    allow_anonymous_writes: bool = Field(
        False,
        description="accept POST /v1/events and DELETE /v1/users/* without an API key "
        "(only when FUSIONREC_API_KEYS is unset); off by default",
    )
    user_key_secret: SecretStr | None = Field(
        None,
        description="HMAC key of user ids (16+ characters); unset = a random key generated "
        "once and kept in STORE/.private/user_key (mode 0600). Every replica needs the same",
    )

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

    @field_validator("user_key_secret")
    @classmethod
    def _strong_user_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("FUSIONREC_USER_KEY_SECRET must be at least 16 characters")
        return value
