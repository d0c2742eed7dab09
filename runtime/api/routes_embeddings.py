"""POST /v1/embeddings, as OpenAI defines it: parse, call serving (serving/embeddings.py), render.

`encoding_format: base64` is each vector's little-endian float32 bytes in base64 (what the official
client asks for by default and decodes); `dimensions` is accepted only as the model's own size: these
models are not trained to be truncated (no Matryoshka training), so a shorter vector would be a worse
one without saying so."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from realm.runtime.serving.embeddings import embed_texts, embedding_model
from realm.runtime.serving.errors import ServingError
from realm.runtime.spec.runtime_config import TenantEntry

from .errors import APIError, api_error
from .schemas import EmbeddingRequest
from .state import AppState

router = APIRouter()


def _encoded(row: np.ndarray[Any, np.dtype[np.float32]], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    state: AppState = request.app.state.realm
    tenant: TenantEntry = request.state.tenant  # set by the middleware
    try:
        dims = embedding_model(state, tenant, body.model).dimensions
        if body.dimensions is not None and body.dimensions != dims:
            raise APIError(
                400,
                f"Model {body.model!r} makes {dims}-dimensional vectors and cannot shorten them; leave "
                f"dimensions out or set it to {dims}.",
                code="invalid_dimensions",
                param="dimensions",
            )
        result = await embed_texts(state, tenant, body.model, body.texts())
    except ServingError as e:
        raise api_error(e) from e
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(row, body.encoding_format)}
            for i, row in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
