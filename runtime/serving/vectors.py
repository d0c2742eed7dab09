"""A tenant's vector collections, whatever door the request came in by (/v1/vector_stores, the ABI):
the store opened from the runtime config, the Tenant's spec.vectors limits enforced on every write,
texts chunked and embedded (serving/embeddings.py), searches by text or vector.

Every call names the tenant; its collections live under its owner key (runtime/vectors/store.py), so an
id of another tenant's collection is not found, exactly like an id that never existed."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from realm.runtime.spec.runtime_config import TenantEntry, VectorsConfig
from realm.runtime.vectors.collection import Collection, CorruptCollection, Hit, Matrix
from realm.runtime.vectors.filters import Filter, MetadataValue, check_depth
from realm.runtime.vectors.manifests import Manifest
from realm.runtime.vectors.objects import (
    ConditionalWritesIgnored,
    DirObjects,
    ObjectsUnavailable,
    S3Objects,
)
from realm.runtime.vectors.store import (
    CollectionConflict,
    CollectionStore,
)
from realm.runtime.vectors.store import (
    CollectionNotFound as StoreNotFound,
)

from .embeddings import embed_texts, embedding_model
from .errors import (
    CollectionNotFound,
    InvalidRequest,
    NotReady,
    StorageQuotaExceeded,
    StoreFailed,
    Unavailable,
)
from .state import ServingState

T = TypeVar("T")
log = logging.getLogger(__name__)

# Chunks for all-MiniLM-L6-v2, which reads 256 tokens: OpenAI's 800/400 would be cut by the model.
CHUNK_TOKENS = 256
CHUNK_OVERLAP = 64
MAX_ITEMS_PER_WRITE = 1024
MAX_K = 100
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE_CHARS = 512
MAX_ID_CHARS = 256


def open_collections(config: VectorsConfig, home: Path) -> CollectionStore:
    """The store `config` names; `home` is the runtime's data folder (the disk default's place)."""
    if config.backend == "disk":
        return CollectionStore(
            DirObjects(Path(config.path).expanduser() if config.path else home / "vectors")
        )
    from realm.runtime.conversations.s3_store import make_client

    bucket = os.environ.get("REALM_S3_BUCKET") or config.bucket
    if not bucket:
        raise ValueError("vectors.backend is s3 but no bucket is set (vectors.bucket or REALM_S3_BUCKET)")
    client = make_client(
        os.environ.get("REALM_S3_ENDPOINT") or config.endpoint,
        os.environ.get("REALM_S3_REGION") or config.region,
    )
    objects = S3Objects(client, bucket, config.prefix)
    try:
        # A server that ignores conditional writes stops the runtime here; one not reachable yet is
        # checked before the first write.
        objects.verify_conditional_writes()
    except ConditionalWritesIgnored:
        raise
    except ObjectsUnavailable as e:
        log.warning("vector collections' S3 not checked at start (checked before the first write): %s", e)
    return CollectionStore(objects)


@dataclass(frozen=True)
class TextItem:
    text: str
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class VectorItem:
    id: str
    vector: Sequence[float]
    text: str | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


def _store(state: ServingState) -> CollectionStore:
    if state.vectors is None:
        raise NotReady("The server is still loading.", code="loading")
    return state.vectors


async def _call(fn: Callable[[], T]) -> T:
    """A blocking store call off the event loop, its failures as serving errors."""
    try:
        return await asyncio.to_thread(fn)
    except StoreNotFound as e:
        raise CollectionNotFound(
            f"No vector store with id '{e}'.", code="not_found", param="vector_store_id"
        ) from e
    except CorruptCollection as e:
        raise StoreFailed(str(e), code="collection_corrupt") from e
    except CollectionConflict as e:
        raise Unavailable(str(e), code="conflict") from e
    except ObjectsUnavailable as e:
        raise Unavailable(f"The vector store failed: {e}", code="store_unavailable") from e


def check_metadata(metadata: dict[str, MetadataValue], where: str = "metadata") -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"{where} has more than {MAX_METADATA_KEYS} keys.", code="invalid_metadata", param=where
        )
    for k, v in metadata.items():
        if not k or len(k) > 64:
            raise InvalidRequest(f"{where} keys are 1-64 characters.", code="invalid_metadata", param=where)
        if not isinstance(v, str | int | float | bool) or (
            isinstance(v, str) and len(v) > MAX_METADATA_VALUE_CHARS
        ):
            raise InvalidRequest(
                f"{where}[{k!r}] must be a number, a boolean or a string of at most "
                f"{MAX_METADATA_VALUE_CHARS} characters.",
                code="invalid_metadata",
                param=where,
            )
        if isinstance(v, float) and not np.isfinite(v):
            raise InvalidRequest(f"{where}[{k!r}] must be finite.", code="invalid_metadata", param=where)


async def create_collection(
    state: ServingState,
    tenant: TenantEntry,
    *,
    name: str = "",
    metadata: dict[str, str] | None = None,
    dims: int | None = None,
    model: str | None = None,
) -> Manifest:
    """A new empty collection: of the embedding model's vectors (`model`, or the runtime's first
    embedding model), or of `dims`-dimensional vectors the caller brings (then texts cannot be added)."""
    store = _store(state)
    owner = state.owner(tenant.name)
    if dims is None:
        embedder = embedding_model(state, tenant, model)
        dims, model = embedder.dimensions, embedder.name
    elif not 1 <= dims <= 4096:
        raise InvalidRequest("dimensions must be 1-4096.", code="invalid_dimensions", param="dimensions")
    else:
        model = None
    if len(name) > 256:
        raise InvalidRequest("name is at most 256 characters.", code="invalid_name", param="name")
    check_metadata(dict(metadata or {}))
    limit = tenant.spec.vectors.max_collections

    def create() -> Manifest:
        have = len(store.list(owner))
        if have >= limit:
            raise StorageQuotaExceeded(
                f"Tenant '{tenant.name}' has {have} vector stores, its limit (spec.vectors.maxCollections); "
                "delete one first.",
                code="vector_store_quota_exceeded",
            )
        return store.create(owner, name=name, dims=dims, model=model, metadata=dict(metadata or {}))

    return await _call(create)


async def list_collections(state: ServingState, tenant: TenantEntry) -> list[Manifest]:
    store, owner = _store(state), state.owner(tenant.name)
    return await _call(lambda: store.list(owner))


def page_of(
    manifests: Sequence[Manifest],
    *,
    limit: int,
    order: str = "desc",
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[Manifest], bool]:
    """One page of a listing as OpenAI's list endpoints cut them: oldest or newest first (`order`),
    after and/or before the collections of those ids, at most `limit`; and whether more follow."""
    ordered = sorted(manifests, key=lambda m: (m.created_at, m.id), reverse=order == "desc")
    ids = [m.id for m in ordered]
    start, end = 0, len(ordered)
    for param, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            raise InvalidRequest(
                f"No vector store with id '{cursor}' in this listing.", code="invalid_cursor", param=param
            )
    if after is not None:
        start = ids.index(after) + 1
    if before is not None:
        end = ids.index(before)
    window = ordered[start:end]
    return window[:limit], len(window) > limit


async def get_collection(state: ServingState, tenant: TenantEntry, cid: str) -> Manifest:
    store, owner = _store(state), state.owner(tenant.name)
    return await _call(lambda: store.manifest(owner, cid))


async def delete_collection(state: ServingState, tenant: TenantEntry, cid: str) -> None:
    store, owner = _store(state), state.owner(tenant.name)
    await _call(lambda: store.delete(owner, cid))


async def _write(
    state: ServingState,
    tenant: TenantEntry,
    cid: str,
    ids: list[str],
    vectors: Matrix,
    texts: list[str | None],
    metadata: list[dict[str, MetadataValue]],
) -> Manifest:
    store, owner = _store(state), state.owner(tenant.name)
    policy = tenant.spec.vectors

    def change(manifest: Manifest, work: Collection) -> None:
        if vectors.shape[1] != manifest.dims:
            raise InvalidRequest(
                f"Vector store '{cid}' holds {manifest.dims}-dimensional vectors, not {vectors.shape[1]}.",
                code="invalid_dimensions",
                param="vector",
            )
        work.upsert(ids, vectors, texts, metadata)
        others = store.usage(owner, besides=cid)
        count, size = others.vectors + len(work), others.vector_bytes + work.vector_bytes
        if count > policy.max_vectors or size > policy.max_vector_bytes:
            raise StorageQuotaExceeded(
                f"This write would make tenant '{tenant.name}' hold {count} vectors ({size} bytes); its "
                f"limits are {policy.max_vectors} vectors and {policy.max_vector_bytes} bytes "
                "(spec.vectors). Nothing was written.",
                code="vector_quota_exceeded",
            )

    try:
        manifest, _ = await _call(lambda: store.update(owner, cid, change))
    except ValueError as e:  # the collection's own checks (finite, non-zero vectors)
        raise InvalidRequest(str(e), code="invalid_vector", param="vector") from e
    return manifest


def _check_ids(ids: Sequence[str]) -> None:
    for i in ids:
        if not i or len(i) > MAX_ID_CHARS:
            raise InvalidRequest(f"ids are 1-{MAX_ID_CHARS} characters.", code="invalid_id", param="id")
    if len(set(ids)) != len(ids):
        raise InvalidRequest("an id appears twice in one request.", code="invalid_id", param="id")


async def add_texts(
    state: ServingState, tenant: TenantEntry, cid: str, items: Sequence[TextItem]
) -> list[str]:
    """Chunk, embed and add texts; returns the chunks' ids (`<item id>#<n>`; a random item id when none)."""
    if not items or len(items) > MAX_ITEMS_PER_WRITE:
        raise InvalidRequest(
            f"Add 1-{MAX_ITEMS_PER_WRITE} texts at once.", code="invalid_input", param="texts"
        )
    manifest = await get_collection(state, tenant, cid)
    if manifest.model is None:
        raise InvalidRequest(
            f"Vector store '{cid}' holds vectors its owner brings; add vectors, not texts.",
            code="texts_not_accepted",
            param="texts",
        )
    embedder = embedding_model(state, tenant, manifest.model)
    ids: list[str] = []
    chunks: list[str] = []
    metadata: list[dict[str, MetadataValue]] = []
    for item in items:
        check_metadata(item.metadata)
        if not item.text.strip():
            raise InvalidRequest("texts must not be empty.", code="invalid_input", param="texts")
        base = item.id or f"item_{os.urandom(8).hex()}"
        for n, piece in enumerate(embedder.chunk(item.text, CHUNK_TOKENS - 2, CHUNK_OVERLAP)):
            ids.append(f"{base}#{n}")
            chunks.append(piece)
            metadata.append({**item.metadata, "item_id": base, "chunk": n})
    _check_ids(ids)
    if len(chunks) > MAX_ITEMS_PER_WRITE:
        raise InvalidRequest(
            f"These texts make {len(chunks)} chunks; at most {MAX_ITEMS_PER_WRITE} per request.",
            code="invalid_input",
            param="texts",
        )
    vectors = np.zeros((0, manifest.dims), dtype=np.float32)
    for start in range(0, len(chunks), 256):
        part = await embed_texts(state, tenant, manifest.model, chunks[start : start + 256])
        vectors = np.concatenate([vectors, part.vectors])
    await _write(state, tenant, cid, ids, vectors, list(chunks), metadata)
    return ids


async def upsert_vectors(
    state: ServingState, tenant: TenantEntry, cid: str, items: Sequence[VectorItem]
) -> int:
    if not items or len(items) > MAX_ITEMS_PER_WRITE:
        raise InvalidRequest(
            f"Add 1-{MAX_ITEMS_PER_WRITE} items at once.", code="invalid_input", param="items"
        )
    ids = [i.id for i in items]
    _check_ids(ids)
    for i in items:
        check_metadata(i.metadata)
        if i.text is not None and len(i.text) > state.max_text_chars:
            raise InvalidRequest("an item's text is too long.", code="invalid_input", param="text")
    widths = {len(i.vector) for i in items}
    if len(widths) != 1:
        raise InvalidRequest(
            "all vectors of one request have one length.", code="invalid_dimensions", param="vector"
        )
    vectors = np.asarray([list(i.vector) for i in items], dtype=np.float32)
    await _write(state, tenant, cid, ids, vectors, [i.text for i in items], [dict(i.metadata) for i in items])
    return len(items)


async def delete_items(state: ServingState, tenant: TenantEntry, cid: str, ids: Sequence[str]) -> int:
    if not ids or len(ids) > MAX_ITEMS_PER_WRITE:
        raise InvalidRequest(
            f"Delete 1-{MAX_ITEMS_PER_WRITE} ids at once.", code="invalid_input", param="ids"
        )
    store, owner = _store(state), state.owner(tenant.name)
    _, gone = await _call(lambda: store.update(owner, cid, lambda _m, work: work.delete(list(ids))))
    return gone


async def search(
    state: ServingState,
    tenant: TenantEntry,
    cid: str,
    query: str | Sequence[float],
    *,
    k: int = 10,
    where: Filter | None = None,
    threshold: float | None = None,
) -> list[Hit]:
    if not 1 <= k <= MAX_K:
        raise InvalidRequest(
            f"k (max_num_results) must be 1-{MAX_K}.", code="invalid_k", param="max_num_results"
        )
    if where is not None:
        try:
            check_depth(where)
        except ValueError as e:
            raise InvalidRequest(str(e), code="invalid_filter", param="filters") from e
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise InvalidRequest(
            "score_threshold must be -1-1.", code="invalid_threshold", param="score_threshold"
        )
    store, owner = _store(state), state.owner(tenant.name)
    manifest, collection = await _call(lambda: store.read(owner, cid))
    if isinstance(query, str):
        if manifest.model is None:
            raise InvalidRequest(
                f"Vector store '{cid}' holds vectors its owner brings; search it with a vector.",
                code="text_query_not_accepted",
                param="query",
            )
        if not query.strip():
            raise InvalidRequest("query must not be empty.", code="invalid_input", param="query")
        vector = (await embed_texts(state, tenant, manifest.model, [query])).vectors[0]
    else:
        vector = np.asarray(list(query), dtype=np.float32)
        if vector.shape != (manifest.dims,):
            raise InvalidRequest(
                f"The query vector must have {manifest.dims} dimensions.",
                code="invalid_dimensions",
                param="query",
            )
    try:
        return await asyncio.to_thread(collection.search, vector, k, where=where, threshold=threshold)
    except ValueError as e:
        raise InvalidRequest(str(e), code="invalid_vector", param="query") from e
