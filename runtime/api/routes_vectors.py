"""Vector stores: a subset of OpenAI's API (create, list, get, delete, search) and Realm's own writes
(`/texts`: texts chunked and embedded; `/items`: vectors the caller brings; `/items/delete`).
Parse, call serving (serving/vectors.py), render OpenAI's shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from realm.runtime.serving import vectors
from realm.runtime.serving.errors import ServingError
from realm.runtime.spec.runtime_config import TenantEntry
from realm.runtime.vectors.filters import Filter, MetadataValue
from realm.runtime.vectors.manifests import Manifest

from .errors import api_error
from .schemas import RequestBody
from .state import AppState

router = APIRouter()

Metadata = dict[Annotated[str, Field(max_length=64)], MetadataValue]


class CreateVectorStore(RequestBody):
    name: str = Field("", max_length=256)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict
    )
    # Realm's: the embedding model the store's texts are embedded with (the runtime's first when
    # absent), or the dimensions of vectors the caller brings (then it takes vectors, not texts).
    embedding_model: str | None = Field(None, max_length=256)
    dimensions: int | None = None


class RankingOptions(RequestBody):
    ranker: str | None = None
    score_threshold: float | None = None


class SearchVectorStore(RequestBody):
    query: str | list[float] = Field(..., description="Text, or (Realm) a vector")
    max_num_results: int = 10
    filters: Filter | None = None
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


class TextIn(RequestBody):
    text: str = Field(..., max_length=1024 * 1024)
    metadata: Metadata = Field(default_factory=dict)
    id: str | None = Field(None, max_length=200)


class AddTexts(RequestBody):
    texts: list[TextIn] = Field(..., max_length=vectors.MAX_ITEMS_PER_WRITE)


class ItemIn(RequestBody):
    id: str = Field(..., max_length=vectors.MAX_ID_CHARS)
    vector: list[float] = Field(..., max_length=4096)
    text: str | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpsertItems(RequestBody):
    items: list[ItemIn] = Field(..., max_length=vectors.MAX_ITEMS_PER_WRITE)


class DeleteItems(RequestBody):
    ids: list[str] = Field(..., max_length=vectors.MAX_ITEMS_PER_WRITE)


def _store_object(m: Manifest) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "vector_store",
        "created_at": m.created_at,
        "name": m.name,
        "usage_bytes": m.vector_bytes,
        "file_counts": {
            "in_progress": 0,
            "completed": m.count,
            "failed": 0,
            "cancelled": 0,
            "total": m.count,
        },
        "status": "completed",
        "metadata": m.metadata,
        "expires_after": None,
        "expires_at": None,
        "last_active_at": m.created_at,
        # Realm's: how its vectors are made.
        "embedding_model": m.model,
        "dimensions": m.dims,
    }


def _who(request: Request) -> tuple[AppState, TenantEntry]:
    return request.app.state.realm, request.state.tenant  # the tenant is set by the middleware


@router.post("/v1/vector_stores")
async def create_store(body: CreateVectorStore, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    try:
        m = await vectors.create_collection(
            state,
            tenant,
            name=body.name,
            metadata=body.metadata,
            dims=body.dimensions,
            model=body.embedding_model,
        )
    except ServingError as e:
        raise api_error(e) from e
    return _store_object(m)


@router.get("/v1/vector_stores")
async def list_stores(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc"),
    after: str | None = Query(None, max_length=64),
    before: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    state, tenant = _who(request)
    try:
        found = await vectors.list_collections(state, tenant)
        page, more = vectors.page_of(found, limit=limit, order=order, after=after, before=before)
    except ServingError as e:
        raise api_error(e) from e
    data = [_store_object(m) for m in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/v1/vector_stores/{store_id}")
async def get_store(store_id: str, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    try:
        return _store_object(await vectors.get_collection(state, tenant, store_id))
    except ServingError as e:
        raise api_error(e) from e


@router.delete("/v1/vector_stores/{store_id}")
async def delete_store(store_id: str, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    try:
        await vectors.delete_collection(state, tenant, store_id)
    except ServingError as e:
        raise api_error(e) from e
    return {"id": store_id, "object": "vector_store.deleted", "deleted": True}


@router.post("/v1/vector_stores/{store_id}/search")
async def search_store(store_id: str, body: SearchVectorStore, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    try:
        hits = await vectors.search(
            state,
            tenant,
            store_id,
            body.query,
            k=body.max_num_results,
            where=body.filters,
            threshold=threshold,
        )
    except ServingError as e:
        raise api_error(e) from e
    return {
        "object": "vector_store.search_results.page",
        "search_query": body.query if isinstance(body.query, str) else "",
        "data": [
            {
                "file_id": h.id,
                "filename": str(h.metadata.get("item_id", h.id)),
                "score": h.score,
                "attributes": h.metadata,
                "content": [{"type": "text", "text": h.text or ""}],
            }
            for h in hits
        ],
        "has_more": False,
        "next_page": None,
    }


@router.post("/v1/vector_stores/{store_id}/texts")
async def add_texts(store_id: str, body: AddTexts, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    items = [vectors.TextItem(t.text, dict(t.metadata), t.id) for t in body.texts]
    try:
        ids = await vectors.add_texts(state, tenant, store_id, items)
    except ServingError as e:
        raise api_error(e) from e
    return {"object": "vector_store.texts", "ids": ids, "chunks": len(ids)}


@router.post("/v1/vector_stores/{store_id}/items")
async def upsert_items(store_id: str, body: UpsertItems, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    items = [vectors.VectorItem(i.id, i.vector, i.text, dict(i.metadata)) for i in body.items]
    try:
        n = await vectors.upsert_vectors(state, tenant, store_id, items)
    except ServingError as e:
        raise api_error(e) from e
    return {"object": "vector_store.items", "upserted": n}


@router.post("/v1/vector_stores/{store_id}/items/delete")
async def delete_items(store_id: str, body: DeleteItems, request: Request) -> dict[str, Any]:
    state, tenant = _who(request)
    try:
        n = await vectors.delete_items(state, tenant, store_id, body.ids)
    except ServingError as e:
        raise api_error(e) from e
    return {"object": "vector_store.items.deleted", "deleted": n}
