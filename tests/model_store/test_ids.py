"""The one id rule (model_store.ids) and its JSON-schema pattern agree."""

from __future__ import annotations

import re

import pytest

from model_store.ids import ID_PATTERN, MAX_ID_LENGTH, check_id, id_problem


@pytest.mark.parametrize("good", ["1", "item-42", "Amélie (2001)", "a b", "x" * MAX_ID_LENGTH])
def test_valid_ids_pass_both_forms(good: str) -> None:
    assert check_id(good) == good
    assert re.fullmatch(ID_PATTERN, good)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("", "empty"),
        ("   ", "blank"),
        ("a\x00b", "control character (U+0000 at position 1)"),
        ("a\nb", "control character"),
        ("a\x7f", "control character"),
        ("a/b", "'/'"),
        ("x" * (MAX_ID_LENGTH + 1), "at most 256"),
    ],
)
def test_bad_ids_are_named_in_both_forms(bad: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        check_id(bad, "item_id")
    assert not re.fullmatch(ID_PATTERN, bad[:MAX_ID_LENGTH]) or len(bad) > MAX_ID_LENGTH


def test_lone_surrogate_is_refused() -> None:
    assert "lone surrogate (U+D800" in str(id_problem("a\ud800"))
    assert id_problem(5) == "must be a string, not int"
