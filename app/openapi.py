"""The OpenAPI document, exact for the catalog being served, and the error statuses.

The request models type ``filter``, ``fields``, item fields and the event ``type`` loosely
(a catalog's fields and the configured event types are known only at run time), so the
document FastAPI generates would call requests valid that the service must refuse. Each
``/openapi.json`` is therefore the generated document with those parts stated exactly for
the snapshot being served: the catalog's field names (``enum``), each field's operators and
value types, an item's text columns and typed attributes, and the configured event types.
Before a bundle is loaded the generated document is served as it is.

Error answers share one shape (``ErrorBody``); :func:`error_responses` declares them on the
routers, so every status a route can answer is documented.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.schemas.events import FUTURE_SLACK_S
from model_store.data.filters import MAX_CONDITIONS, MAX_IN, MAX_VALUE_CHARS, AttrType, ops_of

_WHY = {
    400: "the body is not readable (not UTF-8, or not JSON), or a bad Content-Length",
    401: "a missing or invalid API key or admin token",
    403: "the credentials do not allow this (a write without a key, a read-only key)",
    404: "the item is not in the catalog (or was deleted)",
    409: "a catalog change or reload that conflicts with the served state",
    412: "If-Match names a version the item no longer has (read it again)",
    413: "the body is larger than FUSIONREC_MAX_BODY_BYTES",
    422: "the request is invalid; the message names the field and the valid values",
    429: "rate limited (Retry-After says when to retry)",
    503: "not ready, or a dependency (Redis, the event log) is unavailable (Retry-After)",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a router: each status with the error shape and its meaning."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}


# ---- exact request schemas --------------------------------------------------------------

_JSON_TYPE = {"text": "string", "number": "number", "bool": "boolean"}


def _value(kind: AttrType) -> dict[str, Any]:
    out: dict[str, Any] = {"type": _JSON_TYPE[kind]}
    if kind == "text":
        out["maxLength"] = MAX_VALUE_CHARS
    return out


def _field_filter(kind: AttrType) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in ops_of(kind):
        if op == "in":
            ops[op] = {"type": "array", "items": _value(kind), "minItems": 1, "maxItems": MAX_IN}
        else:
            ops[op] = _value(kind)
    return {"type": "object", "properties": ops, "additionalProperties": False, "minProperties": 1}


def filter_schema(types: Mapping[str, AttrType]) -> dict[str, Any]:
    """``filter``: the catalog's fields, each with its operators and value types."""
    return {
        "type": "object",
        "properties": {name: _field_filter(kind) for name, kind in types.items()},
        "additionalProperties": False,
        "maxProperties": MAX_CONDITIONS,
    }


def _nullable(schema: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` or null, keeping the old property's description and default."""
    out: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    for key in ("description", "default", "title"):
        if key in old:
            out[key] = old[key]
    return out


def _item_fields(types: Mapping[str, AttrType], text: list[str]) -> dict[str, Any]:
    """The settable fields of an item: text columns (non-blank strings) and typed
    attributes (or null, which unsets one)."""
    return {
        name: {"type": "string", "pattern": r"\S"}
        if name in text
        else {"anyOf": [{"type": _JSON_TYPE[kind]}, {"type": "null"}]}
        for name, kind in types.items()
    }


def _patch_request_schemas(
    doc: dict[str, Any], types: dict[str, AttrType], text: list[str]
) -> None:
    schemas = doc["components"]["schemas"]
    names = {"type": "array", "items": {"type": "string", "enum": sorted(types)}, "maxItems": 64}
    example = {"available": {"eq": True}}
    for model in ("RecommendRequest", "SearchRequest", "SimilarRequest", "ItemsBatchGet"):
        props = schemas[model]["properties"]
        props["fields"] = _nullable(names, props["fields"])
        props["fields"]["examples"] = [sorted(types)[:2]]
        if "filter" in props:
            props["filter"] = _nullable(filter_schema(types), props["filter"])
            props["filter"]["examples"] = [example]
    fields = _item_fields(types, text)
    item = schemas["ItemIn"]
    item["properties"] = {"item_id": item["properties"]["item_id"], **fields}
    # a new item needs some text (an edit keeps the text it does not name)
    item.update(additionalProperties=False, anyOf=[{"required": [c]} for c in text])
    patch = schemas["ItemPatch"]
    patch.update(properties=fields, additionalProperties=False, minProperties=1)
    for path in ("/v1/items", "/v1/items/{item_id}/similar"):
        for param in doc["paths"][path]["get"]["parameters"]:
            if param["name"] == "fields":
                param["schema"] = _nullable(names, param["schema"])


def exact_document(
    base: dict[str, Any], types: dict[str, AttrType], text: list[str], event_types: list[str]
) -> dict[str, Any]:
    """``base`` (the generated document) with the catalog's and the event types' parts."""
    doc = copy.deepcopy(base)
    _patch_request_schemas(doc, types, text)
    event = doc["components"]["schemas"]["EventIn"]["properties"]["type"]
    event.pop("maxLength", None)
    event.pop("minLength", None)
    event["enum"] = sorted(event_types)
    _timestamp_bound(doc["components"]["schemas"]["EventIn"]["properties"]["timestamp"])
    return doc


def _timestamp_bound(prop: dict[str, Any]) -> None:
    """An event's timestamp may be at most a day after the server's clock: the bound is
    stated as of this document (it only grows, so a request made from it stays valid)."""
    bound = time.time() + FUTURE_SLACK_S
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "number":
            branch["maximum"] = bound


def _headers_not_null(doc: dict[str, Any]) -> None:
    """An optional header is absent or a string: FastAPI writes ``anyOf [string, null]``
    for it, which a client can only send as the text "null"."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            params = op.get("parameters", []) if isinstance(op, dict) else []
            for param in params:
                schema = param.get("schema", {})
                kept = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
                if param.get("in") == "header" and len(kept) == 1:
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    param["schema"] = {**kept[0], **rest}


def install(
    app: FastAPI,
    served: Callable[[], tuple[dict[str, AttrType], list[str]] | None],
    event_types: list[str],
) -> None:
    """``app.openapi``: the generated document, exact for what ``served`` returns (the
    served catalog's attribute types and text columns; None before a bundle is loaded)."""
    base: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not base:
            base.update(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
            _headers_not_null(base)
        catalog = served()
        if catalog is None:
            return base
        return exact_document(base, catalog[0], catalog[1], event_types)

    app.openapi = openapi  # type: ignore[method-assign]
