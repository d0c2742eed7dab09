"""A tenant's limits, checked here and nowhere else: which models it may use, how many tokens a
request may take (its quotas and the model's context), and what its WebAssembly may spend.

Rate quotas (requests and tokens per minute, queue length) are the scheduler's: they depend on
what else is running, not on the request alone.
"""

from __future__ import annotations

from realm.runtime.engines.base import Engine
from realm.runtime.sandbox.runner import SandboxLimits
from realm.runtime.spec.runtime_config import TenantEntry
from realm.runtime.spec.tenant import Quotas

from .errors import InvalidRequest, ModelNotAllowed, ModelNotFound, NotReady
from .state import ServingState


def configured_tenant(state: ServingState, tenant: str) -> TenantEntry:
    """The tenant's current entry; a tenant removed by a config reload may still be mid-invocation."""
    entry = state.tenants.get(tenant)
    if entry is None:
        raise ModelNotAllowed(f"tenant {tenant!r} is no longer configured")
    return entry


def allowed_engine(state: ServingState, tenant: TenantEntry, model: str) -> Engine:
    """The engine of `model`, if it exists, the tenant may use it and it has loaded."""
    if model not in state.models:
        raise ModelNotFound(f"The model '{model}' does not exist.", code="model_not_found", param="model")
    if model not in tenant.spec.allowed_models:
        raise ModelNotAllowed(
            f"Tenant '{tenant.name}' may not use the model '{model}'.",
            code="model_not_allowed",
            param="model",
        )
    engine = state.engines.get(model)
    if engine is None:
        raise NotReady(f"The model '{model}' is still loading.", code="loading")
    return engine


def max_tokens_within_limits(
    engine: Engine, tenant: TenantEntry, prompt_len: int, requested: int | None, default: int | None
) -> int:
    """The max_tokens to use, after the model's context and the tenant's quotas have had their say."""
    context: int = engine.info.context_length
    quotas = tenant.spec.quotas
    if quotas.max_prompt_tokens is not None and prompt_len > quotas.max_prompt_tokens:
        raise InvalidRequest(
            f"The prompt has {prompt_len} tokens; this tenant may send at most {quotas.max_prompt_tokens}.",
            code="context_length_exceeded",
            param="messages",
        )
    if prompt_len >= context:
        raise InvalidRequest(
            f"This model's maximum context length is {context} tokens; the prompt has {prompt_len}.",
            code="context_length_exceeded",
            param="messages",
        )
    if requested is not None:
        if requested > context:
            raise InvalidRequest(
                f"max_tokens is {requested}; this model's context holds only {context} tokens.",
                code="invalid_value",
                param="max_tokens",
            )
        if quotas.max_tokens_per_request is not None and requested > quotas.max_tokens_per_request:
            raise InvalidRequest(
                f"max_tokens is {requested}; this tenant may request at most "
                f"{quotas.max_tokens_per_request}.",
                code="max_tokens_exceeded",
                param="max_tokens",
            )
        if prompt_len + requested > context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens; the prompt ({prompt_len}) plus "
                f"max_tokens ({requested}) exceed it.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return requested
    limit = context - prompt_len
    if quotas.max_tokens_per_request is not None:
        limit = min(limit, quotas.max_tokens_per_request)
    return min(limit, default) if default is not None else limit


def sandbox_limits(quotas: Quotas) -> SandboxLimits:
    """The tenant's WebAssembly quotas as the sandbox's own limits (unset: the sandbox's defaults)."""
    default = SandboxLimits()
    return SandboxLimits(
        memory_mib=quotas.wasm_memory_mib or default.memory_mib,
        fuel=quotas.wasm_fuel_per_invocation,
        deadline_ms=quotas.wasm_time_ms_per_invocation or default.deadline_ms,
    )
