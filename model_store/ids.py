"""The one rule for user and item ids, at every door (REST bodies and paths, the event log,
the catalog table, dataset and catalog imports).

An id is 1..256 characters, none of them a control character (NUL, newline, DEL: Unicode
category Cc), a lone surrogate (U+D800..U+DFFF, not encodable as UTF-8) or ``/`` (an id is
a URL path segment in ``/v1/items/{id}`` and ``/v1/users/{id}``), and not blank.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 256
# Cc (C0, DEL, C1) and surrogates; "/" separately so the message can name it
# the same rule as a JSON-schema pattern for the OpenAPI document (lone surrogates cannot be
# written in it; check_id refuses them)
_CHAR = r"[^/\x00-\x1f\x7f-\x9f]"
ID_PATTERN = rf"^{_CHAR}*[^/\s\x00-\x1f\x7f-\x9f]{_CHAR}*$"
_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def id_problem(value: object) -> str | None:
    """What is wrong with ``value`` as an id, or None when it is a valid id."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value or not value.strip():
        return "must not be empty or blank"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, not {len(value)}"
    bad = _BAD.search(value)
    if bad is not None:
        code = ord(bad.group())
        kind = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
        return f"must not contain {kind} (U+{code:04X} at position {bad.start()})"
    if "/" in value:
        return f"must not contain '/' (position {value.index('/')}): ids are URL path segments"
    return None


def check_id(value: object, what: str = "id") -> str:
    """``value`` when it is a valid id; otherwise ValueError naming ``what`` and the fault."""
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    assert isinstance(value, str)
    return value
