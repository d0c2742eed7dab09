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

ConstraintKind = Literal["json_schema", "json_object", "regex", "lark", "gbnf"]


class Constraint(BaseModel):
    """What a completion must match, enforced by masking the logits at every step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ConstraintKind
    value: str = Field("", description='schema JSON text, regex or grammar; "" for json_object')


@dataclass(frozen=True)
class Candidate:
    """One token a step controller may choose, from the sequence's distribution at that step."""

    token_id: int
    logprob: float  # log-softmax after the constraint mask (and logit bias)
    text: str  # the token's piece, utf-8 decoded with errors="replace"


@dataclass(frozen=True)
class StepView:
    """One sequence at one step, handed to its controller."""

    request_id: str
    step: int  # index of the completion token being chosen (= tokens generated so far)
    candidates: tuple[Candidate, ...]  # best first, at most controller.top_k, after the constraint
    tokens: tuple[int, ...]  # completion tokens so far


StepKind = Literal["sample", "token", "allow", "bias", "force", "stop"]


@dataclass(frozen=True)
class StepDecision:
    """A controller's answer for one view.

    sample: the sequence's own SamplingParams; token: `tokens == (id,)`; allow: sample among
    `tokens` only; bias: add each value to its token's logit, a value <= -1e30 bans it, then sample;
    force: append `tokens` (at least one) as completion tokens; stop: finish the sequence "stop".
    """

    kind: StepKind
    tokens: tuple[int, ...] = ()
    bias: tuple[tuple[int, float], ...] = ()


StepFailureCode = Literal["sampler_timeout", "sampler_trap", "sampler_invalid"]


@dataclass(frozen=True)
class StepFailure:
    """A controller could not decide: every view of that submit ends with `code`."""

    code: StepFailureCode
    message: str


StepDone = Callable[[Sequence[StepDecision] | StepFailure], None]


class StepController(abc.ABC):
    """Chooses tokens for the sequences that name it, one batched call per step.

    The engine hands the views of all the controller's sequences that are sampled in one step to a
    single `submit`, and leaves those sequences out of decode until `done` is called; a decision
    not back after `2 * budget_s + 0.05` s ends them with "sampler_timeout".
    """

    top_k: int  # candidates per view, 1..64
    budget_s: float  # per-step budget the controller enforces itself

    @abc.abstractmethod
    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        """Must not block. Calls `done` exactly once, from any thread: one decision per view in
        order, or one StepFailure for all of them."""

    def release(self, request_id: str) -> None:  # noqa: B027 - optional hook, default no-op
        """The sequence ended (any reason); default: nothing."""


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
    # The completion must match this (see Engine.check_constraint); None = free text.
    constraint: Constraint | None = None
    # Chooses this sequence's tokens step by step instead of the sampler; None = SamplingParams.
    step_controller: StepController | None = None


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
    # Machine-readable why, with finish_reason "error": "sampler_timeout" | "sampler_trap" |
    # "sampler_invalid" | "invalid_constraint".
    error_code: str | None = None


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


class ConstraintError(EngineError):
    """The constraint does not compile; str(e) says why."""


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

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile `constraint` for this model (cached) or raise ConstraintError saying why."""
        raise ConstraintError("constraints are not supported by this engine")
