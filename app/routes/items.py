"""GET /v1/items/{item_id}, GET /v1/items?ids=, POST /v1/items:batchGet, similar items
(GET and POST /v1/items/{item_id}/similar), and the admin catalog changes: POST /v1/items
(upsert), PATCH and DELETE /v1/items/{item_id}."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from app.core.catalog import UpsertResult
from app.core.reading import Answer, ItemsFound
from app.deps import AdminGuard, CatalogDep, ClientGuard, ReadingDep, SnapshotsDep
from app.openapi import error_responses
from app.routes.recommend import item_dicts
from app.schemas import (
    DeleteResponse,
    ItemIdPath,
    ItemOut,
    ItemPatch,
    ItemsBatch,
    ItemsBatchGet,
    ItemsUpsert,
    SimilarRequest,
    SimilarResponse,
    UpsertResponse,
)
from model_store.errors import PreconditionFailedError

router = APIRouter(
    prefix="/v1/items",
    tags=["items"],
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 422, 429, 503),
)

FieldsQuery = Annotated[
    list[str] | None,
    Query(
        max_length=64,
        description="catalog fields to return with each item (repeat, or comma-separated)",
    ),
]


def _names(fields: list[str] | None) -> list[str] | None:
    if fields is None:
        return None
    return [f.strip() for part in fields for f in part.split(",") if f.strip()]


def _batch(found: ItemsFound) -> ItemsBatch:
    version = found.model_version
    return ItemsBatch(
        model_version=version,
        items=[
            ItemOut(item_id=r.item_id, model_version=version, fields=r.fields, trained=r.trained)
            for r in found.items
        ],
        not_found=found.missing,
    )


def _similar(item_id: str, answer: Answer) -> Response:
    """The SimilarResponse shape, encoded directly: keys of what was not asked for are left
    out, while a null collaborative similarity (a text-only item) is kept."""
    body = {"model_version": answer.model_version, "item_id": item_id, "items": item_dicts(answer)}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("", response_model=ItemsBatch, dependencies=[ClientGuard])
async def get_items(
    reading: ReadingDep,
    ids: Annotated[
        list[str], Query(min_length=1, max_length=1000, description="item ids (repeat or a,b,c)")
    ],
    fields: FieldsQuery = None,
) -> ItemsBatch:
    """Many items at once; ids not in the catalog are listed in `not_found`."""
    wanted = (_names(ids) or [])[:1000]
    # the query is validated already; its ids and fields as the body of :batchGet
    request = ItemsBatchGet.model_construct(ids=wanted, fields=_names(fields))
    return _batch(reading.items(request=request))


@router.post(":batchGet", response_model=ItemsBatch, dependencies=[ClientGuard])
async def batch_get_items(body: ItemsBatchGet, reading: ReadingDep) -> ItemsBatch:
    """Many items at once; ids not in the catalog are listed in `not_found`."""
    return _batch(reading.items(request=body))


@router.get("/{item_id}", response_model=ItemOut, dependencies=[ClientGuard])
async def get_item(
    item_id: ItemIdPath, reading: ReadingDep, snapshots: SnapshotsDep, response: Response
) -> ItemOut:
    """An item with every catalog field; its `ETag` is the item's version (for `If-Match`)."""
    version, record = reading.item(item_id=item_id)
    snap = snapshots.snapshot
    if snap is not None:
        response.headers["ETag"] = f'"{snap.item_versions.get(item_id, 0)}"'
    return ItemOut(
        item_id=item_id, model_version=version, fields=record.fields, trained=record.trained
    )


@router.get("/{item_id}/similar", response_model=SimilarResponse, dependencies=[ClientGuard])
async def similar_items(
    item_id: ItemIdPath,
    reading: ReadingDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    fields: FieldsQuery = None,
    explain: bool = False,
) -> Response:
    """Items closest to this one in the fused item space (text-only items included)."""
    # the query is validated already; it is the body of the POST form without a filter
    request = SimilarRequest.model_construct(
        k=k, filter=None, fields=_names(fields), explain=explain
    )
    return _similar(item_id, await reading.similar(item_id=item_id, request=request))


@router.post("/{item_id}/similar", response_model=SimilarResponse, dependencies=[ClientGuard])
async def similar_items_filtered(
    item_id: ItemIdPath, body: SimilarRequest, reading: ReadingDep
) -> Response:
    """Like the GET form, with a `filter` and `fields` in the body."""
    return _similar(item_id, await reading.similar(item_id=item_id, request=body))


def _if_match(value: str | None) -> int | None:
    """An ``If-Match`` header's item version (``"3"`` or ``W/"3"``); 412 when unreadable."""
    if value is None:
        return None
    if value.strip() == "*":  # any version: the item must exist, as without If-Match
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise PreconditionFailedError(f'If-Match {value[:40]!r}: an item ETag such as "3"')
    return int(text)


IfMatch = Annotated[
    str | None,
    Header(
        description='the item\'s ETag as last read ("3", W/"3" or *): the write is '
        "refused (412) if it changed",
        pattern=r'^\s*(\*|(W/)?"?[0-9]{1,18}"?)\s*$',
    ),
]


def _written(result: UpsertResult, response: Response, item_id: str | None) -> UpsertResponse:
    versions = result.versions or {}
    if item_id is not None and item_id in versions:
        response.headers["ETag"] = f'"{versions[item_id]}"'
    return UpsertResponse(
        model_version=result.model_version,
        added=result.added,
        updated=result.updated,
        catalog_seq=result.seq,
    )


@router.post("", response_model=UpsertResponse, dependencies=[AdminGuard])
async def upsert_items(
    body: ItemsUpsert, catalog: CatalogDep, response: Response
) -> UpsertResponse:
    """Add or edit up to 1,000 items: one change of the catalog table (`catalog_seq`), live
    here at once and on every replica within a second."""
    result = await catalog.upsert(request=body)
    only = body.items[0].item_id if len(body.items) == 1 else None
    return _written(result, response, only)


@router.patch("/{item_id}", response_model=UpsertResponse, dependencies=[AdminGuard])
async def patch_item(
    item_id: ItemIdPath,
    body: ItemPatch,
    catalog: CatalogDep,
    response: Response,
    if_match: IfMatch = None,
) -> UpsertResponse:
    """Change some fields of an item (`available: false` hides it from every list); live
    here at once and on every replica within a second. `If-Match`: only if unchanged."""
    result = await catalog.patch(item_id=item_id, request=body, if_match=_if_match(if_match))
    return _written(result, response, item_id)


@router.delete("/{item_id}", response_model=DeleteResponse, dependencies=[AdminGuard])
async def delete_item(
    item_id: ItemIdPath, catalog: CatalogDep, response: Response, if_match: IfMatch = None
) -> DeleteResponse:
    """Delete an item: never returned again by any endpoint, on every replica.
    `If-Match`: only if unchanged."""
    result = await catalog.delete(item_id=item_id, if_match=_if_match(if_match))
    _written(result, response, item_id)
    return DeleteResponse(
        model_version=result.model_version, deleted=item_id, catalog_seq=result.seq
    )
