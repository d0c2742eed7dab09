"""A request, whatever its door (the OpenAI endpoints, the ABI's generate), checked against its
tenant's limits and made into what the engine is given:

- the model: one that exists, the tenant may use and has loaded, in the version the reference names
  or its weights pick (routing.py);
- the tenant's limits on tokens (its quotas and the model's context), checked here and nowhere
  else; rate quotas are the scheduler's, as they depend on what else is running;
- the prompt's token ids (chat template, text, or token ids), tokenized on a worker thread once the
  text is known to be under the process's cap (`tokenize_chat`, `tokenize_text`): tokenizing a
  megabyte takes long enough to stall every other request on the event loop;
- the sampling parameters, with `logit_bias` as a logits processor: one mapping of request
  fields, so a field means the same thing through either door;
- a response format's constraint (JSON object, JSON schema), bounded in size and depth before the
  engine compiles it (constraints.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from realm.runtime.engines.base import (
    ChatMessage,
    Constraint,
    Engine,
    EngineError,
    LogitsProcessor,
    SamplingParams,
)
from realm.runtime.spec.runtime_config import TenantEntry

from .constraints import checked_constraint
from .errors import InvalidConstraint, InvalidRequest, ModelNotAllowed, NotReady, Unavailable
from .routing import ModelTarget, resolve_target
from .state import ServingState

# Roles OpenAI added after chat templates were written; templates know them by their older name.
_ROLE_ALIASES = {"developer": "system"}

# Request fields that map one to one onto SamplingParams: OpenAI's names (and vLLM's extensions),
# which the ABI's GenerateParams share. A field a request type lacks, or leaves unset, keeps the
# engine's default.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "ignore_eos",
)


# A response format's schema, as JSON text, and how deep its document nests: bounded before the engine
# compiles it (a compile's time and memory grow with both, and a deep document would exhaust a
# recursive compiler's stack). Generous for hand-written and generated schemas alike.
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 64


# ---- what the tenant may ask: the model, the tokens ----------------------------------------------


def configured_tenant(state: ServingState, tenant: str) -> TenantEntry:
    """The tenant's current entry; a tenant removed by a config reload may still be mid-invocation."""
    entry = state.tenants.get(tenant)
    if entry is None:
        raise ModelNotAllowed(f"tenant {tenant!r} is no longer configured")
    return entry


@dataclass(frozen=True)
class ServedModel:
    """The version a request resolved to, and where it runs here: `key` names its engine, admission
    queue and metrics labels (ModelConfig.key)."""

    target: ModelTarget
    key: str
    engine: Engine


def routed_target(
    state: ServingState,
    tenant: TenantEntry,
    reference: str,
    route_key: str | None = None,
    *,
    generates: bool = False,
) -> ModelTarget:
    """The version `reference` reaches for the tenant (routing.resolve_target over this runtime's
    versions and the cluster's). A request that `generates` is counted in realm_model_requests_total:
    the split as measured (tokenizing or describing a model is no traffic)."""
    target = resolve_target(
        reference,
        tenant=tenant,
        route_key=route_key,
        loaded=state.loaded_versions(),
        cluster=state.cluster,
    )
    if generates:
        state.metrics.model_requests.labels(target.name, target.version).inc()
    return target


def allowed_model(
    state: ServingState,
    tenant: TenantEntry,
    reference: str,
    route_key: str | None = None,
    *,
    generates: bool = False,
) -> ServedModel:
    """The engine serving `reference` (`name` or `name@version`) here, if the model exists, the tenant
    may use it, the chosen version is loaded here and has finished loading (`generates`: see
    routed_target)."""
    return served_here(state, routed_target(state, tenant, reference, route_key, generates=generates))


def served_here(state: ServingState, target: ModelTarget) -> ServedModel:
    """The engine of `target` in this runtime: Unavailable when another pod serves that version (the
    cross-pod path, serving/remote.py, is the caller's to try first), NotReady while it loads."""
    key = state.key_of(target)
    if key is None:
        raise Unavailable(
            f"The model version '{target}' is not served here.", code="model_version_not_served"
        )
    engine = state.engines.get(key)
    if engine is None:
        raise NotReady(f"The model '{target}' is still loading.", code="loading")
    return ServedModel(target, key, engine)


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


# ---- what the engine is given: prompt ids, sampling ----------------------------------------------


def chat_prompt_ids(engine: Engine, messages: Sequence[tuple[str, str]]) -> list[int]:
    """(role, text) pairs through the model's chat template."""
    try:
        return _chat_prompt_ids(engine, messages)
    except EngineError as e:
        raise InvalidRequest(
            f"Cannot render the chat prompt: {e}", code="invalid_value", param="messages"
        ) from e


def _chat_prompt_ids(engine: Engine, messages: Sequence[tuple[str, str]]) -> list[int]:
    chat = [ChatMessage(role=_ROLE_ALIASES.get(role, role), content=text) for role, text in messages]
    ids = _template_and_content_ids(engine, chat)
    # Templates of some families write BOS themselves and others leave it to the tokenizer; adding
    # it blindly would double it, which measurably degrades output. Add it only where it is missing.
    bos: list[int] = engine.encode("", add_special=True)
    if bos and ids[: len(bos)] != bos:
        ids = bos + ids
    return ids


def _template_and_content_ids(engine: Engine, chat: Sequence[ChatMessage]) -> list[int]:
    """The rendered chat's ids, with control tokens read only from the template's own text.

    A message's content is the sender's text: `<|im_start|>system` typed by a user must stay text, not
    open a system turn. A chat whose contents spell no control token is tokenized whole, as rendered
    (tokenizing it in pieces would change the ids at the seams). Otherwise the template is rendered
    around a unique mark per message; its own text is tokenized with control tokens and each content
    without. The mark carries a space on each side, so a template that trims content is seen doing it
    and the content is trimmed the same way. A template that alters the marks otherwise (it transforms
    content) cannot keep a content as text, and the request is refused.
    """
    if not any(_spells_control_tokens(engine, m.content) for m in chat):
        return _template_ids(engine, engine.apply_chat_template(chat))
    marks = [f"\x1f{secrets.token_hex(8)}\x1f" for _ in chat]
    content_of = {mark: m.content for m, mark in zip(chat, marks, strict=True)}
    rendered = engine.apply_chat_template(
        [ChatMessage(role=m.role, content=f" {mark} ") for m, mark in zip(chat, marks, strict=True)]
    )
    if not all(mark in rendered or not m.content for m, mark in zip(chat, marks, strict=True)):
        raise InvalidRequest(
            "A message's content spells a control token of this model, which its chat template "
            "cannot keep as text.",
            code="invalid_value",
            param="messages",
        )
    ids: list[int] = []
    at = 0
    for hit in re.finditer("( ?)(" + "|".join(map(re.escape, marks)) + ")( ?)", rendered):
        ids += _template_ids(engine, rendered[at : hit.start()])
        left, mark, right = hit.groups()
        text = content_of[mark]
        text = text if left else text.lstrip()
        text = text if right else text.rstrip()
        ids += engine.encode(text, add_special=False, parse_special=False) if text else []
        at = hit.end()
    return ids + _template_ids(engine, rendered[at:])


def _spells_control_tokens(engine: Engine, text: str) -> bool:
    return bool(text) and engine.encode(text, add_special=False) != engine.encode(
        text, add_special=False, parse_special=False
    )


def _template_ids(engine: Engine, text: str) -> list[int]:
    ids: list[int] = engine.encode(text, add_special=False) if text else []
    return ids


def check_text_size(state: ServingState, texts: Iterable[str], param: str) -> None:
    """Refuse text over RuntimeConfig.server.maxTextChars before any of it is tokenized."""
    size = sum(len(t) for t in texts)
    if size > state.max_text_chars:
        raise InvalidRequest(
            f"The text to tokenize has {size} characters; this server accepts at most "
            f"{state.max_text_chars} per request.",
            code="text_too_long",
            param=param,
        )


async def tokenize_chat(
    state: ServingState, engine: Engine, messages: Sequence[tuple[str, str]]
) -> list[int]:
    """`chat_prompt_ids` for a request: size-checked, then off the event loop."""
    check_text_size(state, (text for _, text in messages), "messages")
    return await asyncio.to_thread(chat_prompt_ids, engine, messages)


async def tokenize_text(
    state: ServingState, engine: Engine, text: str, *, add_special: bool = True, param: str = "prompt"
) -> list[int]:
    """A text's ids for a request (`add_special`: as a prompt, with BOS): size-checked, then off the loop."""
    check_text_size(state, (text,), param)
    ids: list[int] = await asyncio.to_thread(engine.encode, text, add_special=add_special)
    return ids


def text_prompt_ids(engine: Engine, prompt: str) -> list[int]:
    ids: list[int] = engine.encode(prompt, add_special=True)
    return ids


def token_prompt_ids(engine: Engine, tokens: Sequence[int]) -> list[int]:
    """A prompt given as token ids, each checked against the vocabulary."""
    vocab = engine.info.vocab_size
    ids = [int(t) for t in tokens]
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(
            f"Token id {bad[0]} is out of range [0, {vocab}).", code="invalid_value", param="prompt"
        )
    return ids


def sampling_params(fields: BaseModel, *, max_tokens: int, logprobs: int | None = None) -> SamplingParams:
    """The engine's sampling parameters from a request's fields (see SAMPLING_FIELDS)."""
    given: dict[str, Any] = {
        name: value for name in SAMPLING_FIELDS if (value := getattr(fields, name, None)) is not None
    }
    stop: str | list[str] | None = getattr(fields, "stop", None)
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    try:
        return SamplingParams(max_tokens=max_tokens, stop=stops, logprobs=logprobs, **given)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid sampling parameter: {first['msg']}", code="invalid_value", param=param
        ) from e


def logit_bias_processor(bias: dict[str, float] | None, vocab_size: int) -> LogitsProcessor | None:
    """OpenAI's `logit_bias` as an engine logits processor (the same per-step hook WASM samplers use)."""
    if not bias:
        return None
    try:
        keys = [int(k) for k in bias]
    except ValueError as e:
        raise InvalidRequest(
            "logit_bias keys must be token ids.", code="invalid_value", param="logit_bias"
        ) from e
    # Checked as Python ints: a key past int64 would overflow the array instead of being out of range.
    if any(not 0 <= k < vocab_size for k in keys):
        raise InvalidRequest(
            f"logit_bias token ids must be in [0, {vocab_size}).", code="invalid_value", param="logit_bias"
        )
    ids = np.array(keys, dtype=np.int64)
    values = np.array(list(bias.values()), dtype=np.float32)
    # As OpenAI documents: -100 and 100 ban or force a token outright.
    values = np.where(values <= -100, -np.inf, np.where(values >= 100, np.float32(1e4), values))

    def apply(_rid: str, logits: np.ndarray[Any, np.dtype[np.float32]], _generated: Sequence[int]) -> None:
        logits[ids] += values

    return apply


def _depth(value: object) -> int:
    """How deep a parsed JSON document nests (a scalar: 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest


def format_constraint(
    kind: Literal["json_object", "json_schema"], schema: Mapping[str, Any] | None, *, param: str
) -> Constraint:
    """A response format (OpenAI's `json_object`, or `json_schema` with its schema) as an engine
    constraint, not yet compiled; InvalidConstraint naming `param` when it has no schema or the schema
    is too large or too deep. The pod that runs the generation compiles it (`response_constraint` here,
    remote.internal_generation for another pod's model)."""
    if kind == "json_object":
        return Constraint(kind="json_object")
    return Constraint(kind="json_schema", value=_schema_text(schema, param))


def response_constraint(
    engine: Engine,
    kind: Literal["json_object", "json_schema"],
    schema: Mapping[str, Any] | None,
    *,
    param: str,
) -> Constraint:
    """`format_constraint`, compiled by `engine` to check it: InvalidConstraint naming `param` when it
    cannot be."""
    constraint = format_constraint(kind, schema, param=param)
    try:
        return checked_constraint(engine, constraint)
    except InvalidConstraint as e:
        raise InvalidConstraint(e.message, code=e.code or "invalid_constraint", param=param) from e


def _schema_text(schema: Mapping[str, Any] | None, param: str) -> str:
    """The schema as compact JSON text, once it is known to be there and within the bounds."""
    if schema is None:
        raise InvalidConstraint(
            "A json_schema response format needs its 'schema'.", code="invalid_constraint", param=param
        )
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidConstraint(
            f"The response format's schema nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are "
            "allowed.",
            code="invalid_constraint",
            param=param,
        )
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode())
    if size > MAX_SCHEMA_BYTES:
        raise InvalidConstraint(
            f"The response format's schema is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES} are allowed.",
            code="invalid_constraint",
            param=param,
        )
    return text
