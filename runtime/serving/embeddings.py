"""Texts embedded for a tenant, whatever door they came in by (/v1/embeddings, the ABI's `embed`):
the model checked against the tenant's allowedModels, the inputs bounded, admission (the tenant's rate
quotas, its concurrency cap, the model's slots, fair queueing by weight), the engine, usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from realm.runtime.engines.embeddings import EmbeddingError, OnnxEmbedder, Vectors
from realm.runtime.spec.runtime_config import TenantEntry

from .errors import (
    EngineFailed,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NotReady,
)
from .generation import admitted
from .state import ServingState

# OpenAI allows 2048 inputs a request; one request here runs to completion inside one model slot, so
# it is held to what a few batches embed in well under a second.
MAX_INPUTS = 256


@dataclass(frozen=True)
class EmbeddingResult:
    """`vectors` (float32, one unit-length row per input, in input order) from `model`, which read
    `prompt_tokens` tokens in all (after truncation to the model's maxTokens)."""

    vectors: Vectors
    model: str
    prompt_tokens: int

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])


def embedding_model(state: ServingState, tenant: TenantEntry, model: str | None) -> OnnxEmbedder:
    """The embedder `model` names (the runtime's first one when None), if the tenant may use it."""
    if model is None:
        if not state.embedders:
            raise ModelNotFound("This runtime serves no embedding model.", code="model_not_found")
        model = next(iter(state.embedders))
    embedder = state.embedders.get(model)
    if embedder is None:
        if model.partition("@")[0] in {m.name for m in state.models.values()}:
            raise InvalidRequest(
                f"Model {model!r} generates text; it is not an embedding model.",
                code="model_not_embedding",
                param="model",
            )
        raise ModelNotFound(f"The model {model!r} does not exist.", code="model_not_found", param="model")
    if model not in tenant.spec.allowed_models:
        raise ModelNotAllowed(
            f"Tenant '{tenant.name}' may not use the model '{model}'.",
            code="model_not_allowed",
            param="model",
        )
    if embedder.dimensions == 0:
        raise NotReady("The embedding model is still loading.", code="loading")
    return embedder


def check_inputs(state: ServingState, texts: Sequence[str]) -> None:
    if not texts:
        raise InvalidRequest("input must not be empty.", code="invalid_input", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(
            f"input has {len(texts)} items; at most {MAX_INPUTS} per request.",
            code="invalid_input",
            param="input",
        )
    for i, t in enumerate(texts):
        if not t:
            raise InvalidRequest(f"input[{i}] is an empty string.", code="invalid_input", param="input")
    total = sum(len(t) for t in texts)
    if total > state.max_text_chars:
        raise InvalidRequest(
            f"input has {total} characters; at most {state.max_text_chars} per request.",
            code="invalid_input",
            param="input",
        )


async def embed_texts(
    state: ServingState, tenant: TenantEntry, model: str | None, texts: Sequence[str]
) -> EmbeddingResult:
    """Embed `texts` for `tenant`. Raises the serving errors every door maps: InvalidRequest,
    ModelNotFound, ModelNotAllowed, NotReady, QuotaExceeded, Unavailable, EngineFailed."""
    if state.tenants.get(tenant.name) is None:
        raise ModelNotAllowed(f"tenant {tenant.name!r} is no longer configured")
    embedder = embedding_model(state, tenant, model)
    check_inputs(state, texts)
    tokens = sum(embedder.count_tokens(texts))
    labels = (tenant.name, embedder.name)
    ticket = await admitted(state, tenant.name, embedder.name, prompt_tokens=tokens, max_tokens=0)
    used = 0
    try:
        try:
            out = await embedder.embed(texts)
        except EmbeddingError as e:
            raise EngineFailed(str(e), code="engine_error") from e
        used = sum(out.tokens)
    finally:
        ticket.release(prompt_tokens=used, completion_tokens=0)
    state.metrics.embedded_inputs.labels(*labels).inc(len(texts))
    state.metrics.prompt_tokens.labels(*labels).inc(used)
    return EmbeddingResult(out.vectors, embedder.name, used)
