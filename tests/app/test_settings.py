"""Settings: grouped by the part that uses them, read from the flat variable names operators
already use; an invalid one is named as the operator wrote it, its value never echoed when
secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import (
    ENV_NAMES,
    CacheSettings,
    Settings,
    SettingsGroup,
    settings_error_message,
)


def _message(**kwargs: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**kwargs)  # type: ignore[arg-type]
    return settings_error_message(caught.value)


def test_every_grouped_field_has_exactly_one_variable() -> None:
    fields = {
        (group, name)
        for group, info in Settings.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, SettingsGroup)
        for name in info.annotation.model_fields
    }
    assert set(ENV_NAMES.values()) == fields and len(ENV_NAMES) == len(fields)


def test_flat_variables_fill_the_groups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUSIONREC_STORE", str(tmp_path))
    monkeypatch.setenv("FUSIONREC_CACHE_TTL_S", "60")
    monkeypatch.setenv("fusionrec_batch_max_size", "8")  # names match case-insensitively
    monkeypatch.setenv("FUSIONREC_EVENT_TYPES", '{"view": 1, "buy": 4}')
    monkeypatch.setenv("FUSIONREC_HTTP_KEEP_ALIVE_S", "2.5")
    monkeypatch.setenv("FUSIONREC_DEMO", "false")
    monkeypatch.setenv("REDIS_URL", "redis://plain:6379/0")
    s = Settings()  # type: ignore[call-arg]
    assert s.cache.ttl_s == 60 and s.batching.max_size == 8 and s.http.keep_alive_s == 2.5
    assert s.events.types == {"view": 1.0, "buy": 4.0} and s.demo is False
    assert s.redis.url == "redis://plain:6379/0"
    monkeypatch.setenv("FUSIONREC_REDIS_URL", "redis://prefixed:6379/0")
    assert Settings().redis.url == "redis://prefixed:6379/0"  # type: ignore[call-arg]
    # keyword arguments (flat or a group) win over the environment
    s = Settings(store=tmp_path, cache_ttl_s=5, redis_url="redis://kw:1/0")
    assert s.cache.ttl_s == 5 and s.redis.url == "redis://kw:1/0"
    assert Settings(store=tmp_path, cache={"size": 9}).cache == CacheSettings(size=9, ttl_s=60)
    whole = Settings(store=tmp_path, cache=CacheSettings(size=9))
    assert whole.cache == CacheSettings(size=9)  # a group given as a model is taken whole


def test_errors_name_the_variable_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUSIONREC_STORE", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@redis:6379/0")
    monkeypatch.setenv("FUSIONREC_CACHE_TTL_S", "soon")
    monkeypatch.setenv("FUSIONREC_API_KEYS", "")
    message = _message()
    lines = dict(line.split(": ", 1) for line in message.splitlines())
    assert set(lines) == {"REDIS_URL", "FUSIONREC_CACHE_TTL_S"}, message
    assert "hunter2" not in message and "http://" not in message
    assert "(got 'soon')" in lines["FUSIONREC_CACHE_TTL_S"]
    monkeypatch.setenv("FUSIONREC_REDIS_URL", "http://user:hunter2@other:6379/0")
    assert "FUSIONREC_REDIS_URL: must start with redis://" in _message()
    monkeypatch.delenv("FUSIONREC_REDIS_URL")
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("FUSIONREC_EVENT_TYPES", "{not json")
    monkeypatch.setenv("FUSIONREC_USER_KEY_SECRET", "hunter2")
    message = _message()
    assert "FUSIONREC_EVENT_TYPES" in message and "FUSIONREC_USER_KEY_SECRET" in message
    assert "hunter2" not in message
    monkeypatch.delenv("FUSIONREC_STORE")
    assert "FUSIONREC_STORE: Field required" in _message()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FUSIONREC_EVENT_TYPES", "not json", "a JSON object"),
        ("FUSIONREC_EVENT_TYPES", "{}", "at least one type"),
        ("FUSIONREC_EVENT_TYPES", '{"view": NaN}', "finite number"),
        ("FUSIONREC_EVENT_TYPES", '["view"]', "a JSON object"),
        ("FUSIONREC_EVENTS_URL", "mysql://app:Sup3r/SecretPw@db/x", "sqlite"),
        ("FUSIONREC_EVENTS_URL", "postgres://app:Sup3r/Secret@Pw@db:5432/x", None),
    ],
)
def test_every_bad_setting_is_one_line_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, expected: str | None
) -> None:
    """No traceback, no password, whatever shape the URL has ('/' and '@' in it)."""
    monkeypatch.setenv("FUSIONREC_STORE", str(tmp_path))
    monkeypatch.setenv(variable, value)
    if expected is None:  # a valid URL in PostgreSQL's short scheme is accepted
        assert Settings().events.url is not None  # type: ignore[call-arg]
        return
    message = _message()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{variable}: ") and expected in message, message
    assert "Sup3r" not in message and "SecretPw" not in message


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    """The operator's view: `fusionrec serve` and `uvicorn --factory` print one line per bad
    setting and exit 2, never a traceback or the password."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "FUSIONREC_STORE": str(tmp_path),
        "FUSIONREC_EVENTS_URL": "mysql://app:Sup3r/SecretPw@db/x",
        "FUSIONREC_EVENT_TYPES": "{}",
    }
    for cmd in (
        [sys.executable, "-m", "fusionrec", "serve", "--port", "1"],
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:app_from_env", "--port", "1"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        text = done.stdout + done.stderr
        assert done.returncode != 0 and "Traceback" not in text, text
        assert "Sup3r" not in text and "SecretPw" not in text, text
        bad = [line for line in text.splitlines() if line.startswith("error: FUSIONREC_")]
        assert {line.split(":")[1].strip() for line in bad} == {
            "FUSIONREC_EVENTS_URL",
            "FUSIONREC_EVENT_TYPES",
        }, text
