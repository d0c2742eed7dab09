"""The seam between the runtime and an LLM engine.

An engine batches internally (llama.cpp's step loop here, TensorRT-LLM's in-flight batching on
GPUs): the runtime submits one request at a time and reads an async stream of token events.
The shape follows TensorRT-LLM's LLM API (`generate_async(prompt_ids, SamplingParams,
streaming=True)`, logits processors, `cache_salt`) so that its backend is a thin adapter.

Engines never know tenants: whatever identifies a caller arrives as an opaque `cache_salt`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the operator imports this module (KVSnapshot) and has no numpy
    import numpy as np
    import numpy.typing as npt

FinishReason = Literal["stop", "length", "cancelled", "error"]

# Called once per step for the sequence, before sampling, with a writable float32 view of that
# sequence's logits and the token ids generated so far. Mutate the logits in place (mask, bias).
# TensorRT-LLM's `LogitsProcessor.__call__(req_id, logits, token_ids, stream_ptr, client_id)`
# adapts to this in one line.
LogitsProcessor = Callable[[str, "npt.NDArray[np.float32]", Sequence[int]], None]


class SamplingParams(BaseModel):
    """Per-request sampling. Defaults are those of the OpenAI API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=20, description="top alternatives per token; None = off")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class KVSnapshot:
    """A sequence's KV state as the engine exports it, covering `token_ids` exactly."""

    token_ids: tuple[int, ...]
    data: bytes
    fingerprint: str  # engine, version, model digest, KV dtype: a restore into anything else is refused


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    logits_processor: LogitsProcessor | None = None
    # Prefix-cache scope (TensorRT-LLM's `cache_salt`): requests with different salts never share KV.
    cache_salt: str | None = None
    # KV to restore before prefill: its common prefix with prompt_token_ids is reused, the rest dropped
    # (an engine that cannot drop a tail prefills in full instead).
    restore_kv: KVSnapshot | None = None
    # Export this sequence's KV when it finishes; it arrives on the final TokenEvent.
    export_kv: bool = False


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One step of one sequence. The last event of a stream has `finish_reason` set.

    `text` is the newly completed UTF-8 text: the engine holds back bytes of an unfinished
    character and any text that could still turn into a stop string, so concatenating `text`
    over a stream gives exactly the completion.
    """

    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    # Counts, on the final event only.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    kv: KVSnapshot | None = None
    error: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


# ModelInfo.metadata keys of engines that can export and restore KV snapshots.
KV_FINGERPRINT = "realm.kv_fingerprint"
MODEL_DIGEST = "realm.model_digest"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    engine: str  # "llamacpp" | "trtllm"
    version: str  # short content digest of the weights: pins what "this model" means
    context_length: int  # tokens one sequence may hold (prompt + completion)
    vocab_size: int
    max_batch: int  # sequences the engine advances together
    has_chat_template: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    running: int  # sequences being advanced
    waiting: int  # submitted but not yet holding a slot
    kv_used_tokens: int
    kv_capacity_tokens: int


class EngineError(Exception):
    """A request the engine cannot serve (e.g. prompt longer than the context)."""


class Engine(abc.ABC):
    """One loaded model. Thread-safe to call from the event loop; batching is internal."""

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        """Submit and stream. Closing the iterator early (or cancelling the task reading it)
        cancels the sequence and frees its KV within one step."""

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None: ...

    @abc.abstractmethod
    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `parse_special` False: text that spells a control token (`<|im_start|>`)
        stays text, as a user's message content must (it would otherwise forge a role)."""

    @abc.abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        """Render with the model's own template (from its metadata), or its family's built-in one."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...
