"""Runtime settings of the service: one ``Settings`` per process, built once and injected.

The settings are grouped by the part that uses them (``settings.cache``, ``settings.redis``
…; :mod:`.groups`) and each part is handed its group whole. The environment keeps the flat
names operators already use — ``FUSIONREC_CACHE_TTL_S``, ``FUSIONREC_API_KEYS``,
``REDIS_URL`` … — mapped onto the groups by :mod:`.environment`; a before-validator nests
flat keyword arguments the same way, so ``Settings(store=s, cache_ttl_s=60)`` works too.
Model hyper-parameters are not here: they live inside the bundle (``model_store.config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.settings.environment import ENV_NAMES, FlatEnvironment, variable_of
from app.settings.groups import (
    PLAIN_REDIS_URL,
    BatchingSettings,
    CacheSettings,
    EventSettings,
    FollowSettings,
    HistorySettings,
    HttpSettings,
    RedisSettings,
    RuntimeSettings,
    SearchSettings,
    SecuritySettings,
    SettingsGroup,
)
from model_store.database import redact

__all__ = [
    "ENV_NAMES",
    "BatchingSettings",
    "CacheSettings",
    "EventSettings",
    "FollowSettings",
    "HistorySettings",
    "HttpSettings",
    "RedisSettings",
    "RuntimeSettings",
    "SearchSettings",
    "SecuritySettings",
    "Settings",
    "SettingsGroup",
    "redact_url",
    "settings_error_message",
]


class Settings(BaseSettings):
    """The service's runtime configuration (see the README settings table)."""

    model_config = SettingsConfigDict(extra="ignore")

    store: Path = Field(description="store root holding the published bundles and CURRENT")
    demo: bool = Field(True, description="serve the demo storefront page at /demo")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    events: EventSettings = Field(default_factory=EventSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    follow: FollowSettings = Field(default_factory=FollowSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments win over the environment, which is read by its flat names."""
        return init_settings, FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Flat names (keyword arguments, the environment) into their groups: they fill the
        fields a group given as a dict leaves out; a group given as a model is taken whole."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        if "redis_url" in out:  # FUSIONREC_REDIS_URL (or the keyword) wins over REDIS_URL
            out.pop(PLAIN_REDIS_URL, None)
        for name in [n for n in out if n in ENV_NAMES or n == PLAIN_REDIS_URL]:
            group, field = ENV_NAMES.get(name, ("redis", PLAIN_REDIS_URL))
            value = out.pop(name)
            section = out.get(group, {})
            if isinstance(section, dict):
                out[group] = {field: value, **section}
        return out

    @model_validator(mode="after")
    def _store_exists(self) -> Settings:
        if not self.store.is_dir():
            raise ValueError(f"{self.store} is not a directory")
        return self


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` URL replaced."""
    return redact(text)


def settings_error_message(exc: ValidationError) -> str:
    """One line per invalid setting: its variable, what is wrong and, for settings that
    are not secret, the value given (pydantic's own text echoes every input)."""
    lines: list[str] = []
    for err in exc.errors():
        var, secret = variable_of(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got: Any = err.get("input")
        shown = ""
        if var != "settings" and not secret and not isinstance(got, (dict, list)):
            shown = f" (got {redact_url(repr(got))[:80]})"
        lines.append(f"{var}: {redact_url(msg)}{shown}")
    return "\n".join(lines)
