"""The environment's flat names of the grouped settings, and the source that reads them.

Operators keep the names they know (``FUSIONREC_CACHE_TTL_S``, ``FUSIONREC_API_KEYS``, plain
``REDIS_URL`` …): :data:`ENV_NAMES` maps each onto its group and field, and
:func:`variable_of` maps an error's location back onto the variable the operator set.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from app.settings.groups import PLAIN_REDIS_URL

PREFIX = "FUSIONREC_"

# FUSIONREC_<NAME> → (group, field): the names operators use, kept from the flat settings
ENV_NAMES: dict[str, tuple[str, str]] = {
    "device": ("runtime", "device"),
    "candidates": ("runtime", "candidates"),
    "torch_threads": ("runtime", "torch_threads"),
    "faiss_threads": ("runtime", "faiss_threads"),
    "rerank": ("runtime", "rerank"),
    "batch_max_size": ("batching", "max_size"),
    "batch_max_wait_ms": ("batching", "max_wait_ms"),
    "max_body_bytes": ("http", "max_body_bytes"),
    "http_header_timeout_s": ("http", "header_timeout_s"),
    "http_max_header_bytes": ("http", "max_header_bytes"),
    "http_body_timeout_s": ("http", "body_timeout_s"),
    "http_keep_alive_s": ("http", "keep_alive_s"),
    "http_limit_concurrency": ("http", "limit_concurrency"),
    "forwarded_allow_ips": ("http", "forwarded_allow_ips"),
    "access_log": ("http", "access_log"),
    "access_log_sample": ("http", "access_log_sample"),
    "redis_url": ("redis", "url"),
    "redis_timeout_s": ("redis", "timeout_s"),
    "breaker_failures": ("redis", "breaker_failures"),
    "breaker_reset_s": ("redis", "breaker_reset_s"),
    "cache_ttl_s": ("cache", "ttl_s"),
    "cache_size": ("cache", "size"),
    "cache_max_bytes": ("cache", "max_bytes"),
    "history_max_len": ("history", "max_len"),
    "history_max_user_bytes": ("history", "max_user_bytes"),
    "history_ttl_s": ("history", "ttl_s"),
    "history_max_bytes": ("history", "max_bytes"),
    "history_max_pending_users": ("history", "max_pending_users"),
    "history_drain_s": ("history", "drain_s"),
    "events_url": ("events", "url"),
    "event_types": ("events", "types"),
    "events_max_pending": ("events", "max_pending"),
    "events_spool_max_bytes": ("events", "spool_max_bytes"),
    "search_user_weight": ("search", "user_weight"),
    "search_mode": ("search", "mode"),
    "search_min_similarity": ("search", "min_similarity"),
    "search_query_cache": ("search", "query_cache"),
    "follow_poll_s": ("follow", "poll_s"),
    "admin_token": ("security", "admin_token"),
    "api_keys": ("security", "api_keys"),
    "rate_limit_rps": ("security", "rate_limit_rps"),
    "rate_limit_burst": ("security", "rate_limit_burst"),
    "auth_fail_rps": ("security", "auth_fail_rps"),
    "auth_fail_burst": ("security", "auth_fail_burst"),
    "user_events_per_minute": ("security", "user_events_per_minute"),
    "allow_anonymous_writes": ("security", "allow_anonymous_writes"),
    "user_key_secret": ("security", "user_key_secret"),
}
TOP_LEVEL = ("store", "demo")
_FLAT_OF = {place: name for name, place in ENV_NAMES.items()}
# settings whose value never appears in a message (the Redis URL may carry a password)
SECRETS = frozenset(
    {
        ("security", "admin_token"),
        ("security", "api_keys"),
        ("security", "user_key_secret"),
        ("redis", "url"),
        ("events", "url"),  # its validator names the value itself, password masked
        ("redis", PLAIN_REDIS_URL),
    }
)


class FlatEnvironment(PydanticBaseSettingsSource):
    """The ``FUSIONREC_*`` variables (and plain ``REDIS_URL``) by their flat names, as raw
    strings; ``Settings`` nests them into the groups. Names are matched case-insensitively,
    like pydantic-settings' own environment source."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every name at once

    def __call__(self) -> dict[str, Any]:
        env = {name.upper(): value for name, value in os.environ.items()}
        found = {
            name: env[PREFIX + name.upper()]
            for name in (*TOP_LEVEL, *ENV_NAMES)
            if PREFIX + name.upper() in env
        }
        if "redis_url" not in found and PLAIN_REDIS_URL in env:
            found[PLAIN_REDIS_URL] = env[PLAIN_REDIS_URL]
        return found


def variable_of(loc: tuple[int | str, ...]) -> tuple[str, bool]:
    """(the variable an operator sets for the setting at ``loc``, whether it is secret)."""
    parts = [str(p) for p in loc]
    if not parts:
        return "settings", False
    if len(parts) == 1:
        return (PREFIX + parts[0].upper() if parts[0] in TOP_LEVEL else "settings"), False
    place = (parts[0], parts[1])
    if parts[1] == PLAIN_REDIS_URL:
        return PLAIN_REDIS_URL, True
    flat = _FLAT_OF.get(place)
    return (PREFIX + flat.upper() if flat else "settings"), place in SECRETS
