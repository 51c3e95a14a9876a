from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.config import Config
from model_store.errors import ConfigError


def test_round_trip() -> None:
    cfg = Config()
    cfg.model.fusion = "late"
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"model": {"fusion": "deep"}}, "valid: id, text, late, joint"),
        ({"model": {"dimm": 3}}, "unknown keys ['dimm']"),
        ({"modle": {}}, "unknown config sections"),
        ({"model": {"dim": 30, "n_heads": 4}}, "divisible"),
        ({"train": {"alpha": -1}}, "train.alpha"),
        ({"text": {"mode": "full"}}, "valid: frozen, lora"),
        ({"train": {"future_targets": 0}}, "train.future_targets=0"),
        ({"train": {"future_decay": 0}}, "train.future_decay=0"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay=1.0"),
        ({"train": {"batch_size": -1}}, "train.batch_size=-1"),
    ],
)
def test_invalid_values_are_named(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        Config.from_dict(raw)
    assert needle in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_file(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"train": {"epochs": 3}}))
    assert Config.from_file(ok).train.epochs == 3
