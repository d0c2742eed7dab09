"""llama.cpp backend with its own continuous batching.

One thread per model owns the llama.cpp context. Each step it takes new requests and
cancellations, admits waiting sequences while batch slots and KV space allow, then advances every
running sequence — from every caller — in one `llama_decode`: one token for each decoding
sequence, and a chunk of prompt for sequences still prefilling (chunked prefill, so a long prompt
delays the decoders by one chunk per step, never by its whole length). Finished and cancelled
sequences free their KV before the next step.

Sampling: greedy requests take an argmax over the logits row (numpy, no Python loop over the
vocabulary); the rest run llama.cpp's sampler chain in C. Events for all sequences of a step are
handed to the event loop in one `call_soon_threadsafe`.

Constrained sequences (`EngineRequest.constraint`) carry an llguidance matcher; the masks of all of
a step's constrained rows are filled while `llama_decode` runs (constraints.StepMasks) and applied
to the logits rows in place before the argmax or sampler chain, so both see only tokens the
constraint allows. EOS is allowed only where the constraint accepts, and a sequence whose matcher
has nothing left to add finishes "stop".

Controlled sequences (`EngineRequest.step_controller`): after a decode, the views of all the rows
sharing one controller go to it in a single `submit`; those sequences sit out of decode until its
decision is back (the others go on), and are ended "sampler_timeout" past the backstop
(`2 * budget_s + 0.05` s). Decisions are checked and applied on this thread (step_control).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L
import numpy as np

from ..spec.engine_args import LlamaCppArgs, llamacpp_args
from ..spec.runtime_config import ModelConfig
from . import llamacpp_native as native
from .base import (
    KV_FINGERPRINT,
    MODEL_DIGEST,
    ChatMessage,
    Constraint,
    ConstraintError,
    Engine,
    EngineError,
    EngineRequest,
    EngineStats,
    FinishReason,
    KVSnapshot,
    ModelInfo,
    StepController,
    StepDecision,
    StepFailure,
    StepView,
    TokenEvent,
    TopLogprob,
)
from .constraints import Constraints, StepMasks
from .model_files import resolve_source, weights_digest
from .step_control import (
    MAX_TOP_K,
    DecisionError,
    Submission,
    allowed,
    biased,
    candidates,
    check_ids,
    log_softmax,
    sample_row,
)
from .text_stream import TextStream

log = logging.getLogger("realm.engine")

# Defaults of engineArgs.batchSize (decode tokens plus prefill chunks in one llama_decode) and of the
# cap on engineArgs.ubatchSize (tokens computed at once inside it).
STEP_TOKENS = 512
UBATCH_TOKENS = 512
PENALTY_WINDOW = 64
GROWTH_RESERVE = 32  # tokens of growth admission keeps free per running sequence


@dataclass(eq=False)
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenEvent]


@dataclass(eq=False)
class _Seq:
    req: EngineRequest
    sink: _Sink
    tokens: list[int]
    n_prompt: int
    text: TextStream
    seq_id: int = -1
    n_past: int = 0  # tokens already in the KV cache
    n_generated: int = 0
    cached: int = 0  # prompt tokens restored from a snapshot instead of prefilled
    sampler: Any = None  # llama_sampler_p, or None for the greedy argmax path
    started: bool = False  # admitted at least once (sampler built, snapshot restored)
    generated: list[int] = field(default_factory=list)
    matcher: Any = None  # llguidance.LLMatcher of a constrained sequence
    awaiting: Submission | None = None  # the controller's decision this sequence waits for
    row: np.ndarray[Any, np.dtype[np.float32]] | None = None  # its logits, copied for that decision
    rng: np.random.Generator | None = None  # draws of a controlled sequence's "sample" decisions

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.n_past


def context_settings(cfg: ModelConfig, args: LlamaCppArgs, *, n_ctx: int) -> native.ContextSettings:
    """engineArgs over the model's runtime settings over Realm's defaults."""
    threads = args.threads or cfg.threads or os.cpu_count() or 1
    n_batch = args.batch_size or STEP_TOKENS
    return native.ContextSettings(
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=args.ubatch_size or min(n_batch, UBATCH_TOKENS),
        n_seq_max=cfg.max_batch,
        n_threads=threads,
        n_threads_batch=args.threads_batch or threads,
        flash_attn=args.flash_attn,
        type_k=args.cache_type_k or "f16",
        type_v=args.cache_type_v or "f16",
    )


def kv_types(settings: native.ContextSettings) -> str:
    """`f16`, or `k=q8_0,v=q8_0` when the cache is not f16 throughout (part of the KV fingerprint)."""
    if settings.type_k == settings.type_v == "f16":
        return "f16"
    return f"k={settings.type_k},v={settings.type_v}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LlamaCppEngine(Engine):
    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self._info: ModelInfo | None = None
        self._model: native.LoadedModel | None = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._pieces: native.PieceCache | None = None
        self._template: bytes | None = None
        self._fingerprint = ""
        self._context_length = 0
        self._kv_capacity = 0
        self._step_tokens = STEP_TOKENS
        self._constraints: Constraints | None = None
        self._masks: StepMasks | None = None

        self._cv = threading.Condition()
        self._incoming: deque[_Seq] = deque()
        self._cancels: set[str] = set()
        self._live_ids: set[str] = set()
        self._settled: list[Submission] = []  # controllers' answers, appended from any thread
        self._stopping = False
        self._thread: threading.Thread | None = None

        # Owned by the engine thread.
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._by_id: dict[str, _Seq] = {}
        self._free_ids: list[int] = []
        self._submissions: list[Submission] = []  # in flight, for the backstop
        self.preemptions = 0
        # Read by stats() from other threads; plain ints are updated atomically.
        self._kv_used = 0
        self._n_waiting = 0
        self.steps = 0

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineError(f"model {self.cfg.name} is not loaded")
        return self._info

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.cfg.name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        path = resolve_source(self.cfg.source)
        digest = weights_digest(path)
        args = llamacpp_args(self.cfg.engine_args)
        model = native.load_model(path, args)
        context_length = self.cfg.context_length or min(model.n_ctx_train, 8192)
        settings = context_settings(self.cfg, args, n_ctx=max(self.cfg.kv_cache_tokens, context_length))
        ctx = native.new_context(model, settings)
        self._model, self._ctx = model, ctx
        self._step_tokens = settings.n_batch
        self._mem = L.llama_get_memory(ctx)
        self._batch = L.llama_batch_init(self._step_tokens, 0, 1)
        self._pieces = native.PieceCache(model)
        self._constraints = Constraints(model.vocab)
        self._masks = StepMasks(model.n_vocab, self.cfg.max_batch)
        self._kv_capacity = L.llama_n_ctx(ctx)
        self._context_length = min(context_length, self._kv_capacity)
        self._free_ids = list(range(self.cfg.max_batch - 1, -1, -1))
        # A GGUF without a template would silently get chatml from llama.cpp; use the configured
        # built-in template name instead (e.g. "gemma" for Gemma 3 base).
        self._template = model.chat_template or (self.cfg.chat_template or "").encode() or None
        # A snapshot restores only into a context with the same KV cache types.
        self._fingerprint = f"llamacpp-{L.__version__}:{digest[:16]}:{kv_types(settings)}"
        self._info = ModelInfo(
            name=self.cfg.name,
            engine="llamacpp",
            version=digest[:12],
            context_length=self._context_length,
            vocab_size=model.n_vocab,
            max_batch=self.cfg.max_batch,
            has_chat_template=model.chat_template is not None,
            metadata={
                **{
                    k: v
                    for k in ("general.name", "general.architecture", "general.file_type")
                    if (v := native.meta(model, k) or "")
                },
                # What a KV snapshot must match to be restored here (engine, version, weights, KV dtype);
                # the full digest keys snapshot stores.
                KV_FINGERPRINT: self._fingerprint,
                MODEL_DIGEST: digest,
            },
        )
        log.info(
            "loaded %s from %s (version %s, context %d, kv %d %s, batch %d, threads %d/%d, "
            "step %d/%d tokens)",
            self.cfg.name,
            path,
            digest[:12],
            self._context_length,
            self._kv_capacity,
            kv_types(settings),
            self.cfg.max_batch,
            settings.n_threads,
            settings.n_threads_batch,
            settings.n_batch,
            settings.n_ubatch,
        )

    async def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._masks is not None:
            self._masks.close()
            self._masks = None
        if self._batch is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.free()

    # ---- text ------------------------------------------------------------------------------

    def _loaded(self) -> native.LoadedModel:
        if self._model is None:
            raise EngineError(f"model {self.cfg.name} is not loaded")
        return self._model

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return native.tokenize(self._loaded(), text, add_special=add_special, parse_special=parse_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        model = self._loaded()
        self._check_ids(token_ids)
        return native.detokenize(model, token_ids)

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        self._loaded()
        try:
            return native.apply_chat_template(
                self._template, [(m.role, m.content) for m in messages], add_generation_prompt
            )
        except native.NativeError as e:
            raise EngineError(str(e)) from e

    def check_constraint(self, constraint: Constraint) -> None:
        if self._constraints is None:
            raise EngineError(f"model {self.cfg.name} is not loaded")
        self._constraints.matcher(constraint)

    def _check_ids(self, token_ids: Sequence[int]) -> None:
        n_vocab = self.info.vocab_size
        for t in token_ids:
            if not 0 <= t < n_vocab:
                # llama.cpp aborts the whole process on an out-of-range id: refuse it here.
                raise EngineError(f"token id {t} is outside the vocabulary (0..{n_vocab - 1})")

    # ---- requests --------------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        seq = self._make_seq(request)
        with self._cv:
            if self._stopping:
                raise EngineError("engine is shutting down")
            if request.request_id in self._live_ids:
                raise EngineError(f"request id {request.request_id!r} is already in flight")
            self._live_ids.add(request.request_id)
            self._incoming.append(seq)
            self._cv.notify()
        done = False
        try:
            while not done:
                event = await seq.sink.queue.get()
                done = event.finish_reason is not None
                yield event
        finally:
            if not done:
                self.cancel(request.request_id)

    def _make_seq(self, request: EngineRequest) -> _Seq:
        prompt = list(request.prompt_token_ids)
        if not prompt:
            raise EngineError("the prompt is empty")
        self._check_ids(prompt)
        if len(prompt) >= self._context_length:
            raise EngineError(
                f"the prompt is {len(prompt)} tokens; this model's context holds {self._context_length} "
                "including at least one completion token"
            )
        self._check_ids(request.params.stop_token_ids)
        if (ctrl := request.step_controller) is not None:
            p = request.params
            if p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
                raise EngineError("penalties cannot be combined with a step controller")
            if not 1 <= ctrl.top_k <= MAX_TOP_K:
                raise EngineError(f"a step controller's top_k must be 1..{MAX_TOP_K}, not {ctrl.top_k}")
            if not ctrl.budget_s > 0:
                raise EngineError(f"a step controller's budget_s must be positive, not {ctrl.budget_s}")
        loop = asyncio.get_running_loop()
        return _Seq(
            req=request,
            sink=_Sink(loop, asyncio.Queue()),
            tokens=prompt,
            n_prompt=len(prompt),
            text=TextStream(request.params.stop),
        )

    def cancel(self, request_id: str) -> None:
        with self._cv:
            self._cancels.add(request_id)
            self._cv.notify()

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._active),
            waiting=self._n_waiting + len(self._incoming),
            kv_used_tokens=self._kv_used,
            kv_capacity_tokens=self._kv_capacity,
        )

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                # Sequences waiting for a controller give this thread nothing to do: it sleeps
                # until an answer, a request or the next backstop deadline.
                while not (
                    self._stopping
                    or self._incoming
                    or self._cancels
                    or self._settled
                    or self._runnable()
                    or self._overdue()
                ):
                    self._cv.wait(self._until_deadline())
                if self._stopping:
                    break
                incoming = list(self._incoming)
                self._incoming.clear()
                cancels, self._cancels = self._cancels, set()
                settled, self._settled = self._settled, []
            out: list[tuple[_Sink, TokenEvent]] = []
            try:
                for seq in incoming:
                    self._by_id[seq.req.request_id] = seq
                    self._waiting.append(seq)
                for rid in cancels:
                    if (seq_c := self._by_id.get(rid)) is not None:
                        self._finish(seq_c, "cancelled", out)
                for sub in settled:
                    self._settle(sub, out)
                self._expire(out)
                self._admit(out)
                if any(s.awaiting is None for s in self._active):
                    self._step(out)
            except Exception as e:
                # A bug must cost the requests in flight, never the engine or the process.
                log.exception("engine %s step failed; failing its requests", self.cfg.name)
                for seq in list(self._by_id.values()):
                    self._finish(seq, "error", out, error=f"internal engine error: {type(e).__name__}")
            self._n_waiting = len(self._waiting)
            self._kv_used = sum(s.n_past for s in self._active)
            self._deliver(out)
        out = []
        with self._cv:
            leftovers = list(self._incoming)
            self._incoming.clear()
        for seq in [*self._by_id.values(), *leftovers]:
            self._finish(seq, "cancelled", out, error="the engine shut down")
        self._deliver(out)

    def _runnable(self) -> bool:
        return any(s.awaiting is None for s in self._active) or bool(self._waiting and self._free_ids)

    def _overdue(self) -> bool:
        now = time.monotonic()
        return any(sub.deadline <= now for sub in self._submissions)

    def _until_deadline(self) -> float | None:
        if not self._submissions:
            return None
        return max(0.0, min(sub.deadline for sub in self._submissions) - time.monotonic())

    def _deliver(self, out: list[tuple[_Sink, TokenEvent]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[TokenEvent], TokenEvent]]] = {}
        for sink, event in out:
            by_loop.setdefault(sink.loop, []).append((sink.queue, event))
        for loop, items in by_loop.items():
            # A closed loop means that caller is gone: nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, items)

    def _admit(self, out: list[tuple[_Sink, TokenEvent]]) -> None:
        # Optimistic admission, as vLLM does: a sequence enters when its tokens fit now plus a
        # little growth for every running sequence; nothing is reserved for all of max_tokens
        # (two long requests would lock out everyone). When the cache does run out, the youngest
        # sequence is preempted and recomputed later (_make_room).
        held = sum(self._footprint(s) for s in self._active)
        while self._waiting and self._free_ids:
            seq = self._waiting[0]
            if held + self._footprint(seq) > self._kv_capacity and self._active:
                break  # FIFO: a large request is not overtaken forever by small ones
            self._waiting.popleft()
            seq.seq_id = self._free_ids.pop()
            held += self._footprint(seq)
            self._active.append(seq)
            if not seq.started:
                seq.started = True
                if seq.req.constraint is not None and not self._start_matcher(seq, out):
                    continue
                if seq.req.step_controller is None:
                    seq.sampler = self._make_sampler(seq)
                else:
                    seq.rng = np.random.default_rng(seq.req.params.seed)
                self._restore(seq)

    def _start_matcher(self, seq: _Seq, out: list[tuple[_Sink, TokenEvent]]) -> bool:
        assert self._constraints is not None and seq.req.constraint is not None
        try:
            # Compiled on this thread, not the caller's event loop (cached after the first time).
            seq.matcher = self._constraints.matcher(seq.req.constraint)
        except ConstraintError as e:
            self._finish(seq, "error", out, error=str(e), error_code="invalid_constraint")
            return False
        return True

    @staticmethod
    def _footprint(seq: _Seq) -> int:
        return len(seq.tokens) + min(seq.req.params.max_tokens - seq.n_generated, GROWTH_RESERVE)

    def _make_room(self, needed: int) -> None:
        """Preempt the youngest sequences until this step's tokens fit in the KV cache."""
        # A sequence waiting for its controller is not preempted: its decision is applied in place.
        victims = [s for s in self._active if s.awaiting is None]
        while (
            len(self._active) > 1
            and victims
            and sum(s.n_past for s in self._active) + needed > self._kv_capacity
        ):
            victim = victims.pop()
            self._active.remove(victim)
            L.llama_memory_seq_rm(self._mem, victim.seq_id, -1, -1)
            self._free_ids.append(victim.seq_id)
            victim.seq_id = -1
            victim.n_past = 0  # its tokens, generated ones included, are prefilled again later
            self._waiting.appendleft(victim)
            self.preemptions += 1
            log.info("KV cache full: preempted %s for recompute", victim.req.request_id)

    def _make_sampler(self, seq: _Seq) -> Any:
        p = seq.req.params
        penalties = p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if p.greedy and not penalties:
            return None
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if penalties:
            L.llama_sampler_chain_add(
                chain,
                # libllama as vendored by llama-cpp-python 0.3.36 takes n_vocab first (llama.h).
                L.llama_sampler_init_penalties(
                    self.info.vocab_size,
                    PENALTY_WINDOW,
                    p.repetition_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
        if p.greedy:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(p.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else L.LLAMA_DEFAULT_SEED
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _restore(self, seq: _Seq) -> None:
        snap = seq.req.restore_kv
        if snap is None:
            return
        # The snapshot may run past the prompt (a shared system prompt followed by another question):
        # what counts is the common prefix, and the rest of the restored sequence is dropped.
        n = common_prefix(snap.token_ids, seq.tokens[: seq.n_prompt])
        # The last prompt token must go through decode to produce logits.
        n = min(n, seq.n_prompt - 1)
        usable = snap.fingerprint == self._fingerprint and n > 0
        if not usable or not native.state_seq_set(self._ctx, seq.seq_id, snap.data):
            L.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            log.info("KV snapshot for %s not usable; prefilling in full", seq.req.request_id)
            return
        if n < len(snap.token_ids) and not L.llama_memory_seq_rm(self._mem, seq.seq_id, n, -1):
            # Sliding-window caches cannot drop a tail: start over rather than keep a wrong one.
            L.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            log.info("KV snapshot for %s cannot be cut at %d; prefilling in full", seq.req.request_id, n)
            return
        seq.n_past = seq.cached = n

    def _step(self, out: list[tuple[_Sink, TokenEvent]]) -> None:
        # While others decode, a prompt advances by at most one chunk per step.
        decoding = sum(1 for s in self._active if s.pending == 1)
        chunk_cap = self.cfg.prefill_chunk if decoding else self._step_tokens
        needed = decoding + sum(min(s.pending, chunk_cap) for s in self._active if s.pending > 1)
        self._make_room(min(needed, self._step_tokens))
        batch = self._batch
        n = 0
        rows: list[tuple[_Seq, int]] = []
        spans: list[tuple[_Seq, int]] = []
        for seq in [s for s in self._active if s.pending == 1]:
            n = self._add(batch, n, seq, 1, rows, spans)
        for seq in [s for s in self._active if s.pending > 1]:
            room = self._step_tokens - n
            if room <= 0:
                break
            n = self._add(batch, n, seq, min(seq.pending, room, chunk_cap), rows, spans)
        batch.n_tokens = n
        if n == 0:
            return
        assert self._masks is not None
        # The masks of this step's constrained rows are filled while the batch decodes.
        self._masks.start([(s.matcher, s.seq_id) for s, _ in rows if s.matcher is not None])
        try:
            rc = L.llama_decode(self._ctx, batch)
        finally:
            self._masks.wait()
        self.steps += 1
        if rc != 0:
            log.error("llama_decode returned %d on a batch of %d tokens", rc, n)
            for seq, _ in spans:
                self._finish(seq, "error", out, error=f"the engine failed to decode (code {rc})")
            return
        for seq, count in spans:
            seq.n_past += count
        # By identity: a controller object may define equality (a dataclass) and not be hashable.
        views: dict[int, tuple[StepController, list[tuple[_Seq, StepView]]]] = {}
        for seq, idx in rows:
            if (ctrl := seq.req.step_controller) is None:
                self._sample(seq, idx, out)
            elif (view := self._view(seq, ctrl, idx, out)) is not None:
                views.setdefault(id(ctrl), (ctrl, []))[1].append((seq, view))
        for ctrl, group in views.values():
            self._submit(ctrl, group, out)

    def _add(
        self,
        batch: Any,
        n: int,
        seq: _Seq,
        count: int,
        rows: list[tuple[_Seq, int]],
        spans: list[tuple[_Seq, int]],
    ) -> int:
        start = seq.n_past
        for j in range(count):
            batch.token[n] = seq.tokens[start + j]
            batch.pos[n] = start + j
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = 0
            n += 1
        if start + count == len(seq.tokens):
            batch.logits[n - 1] = 1
            rows.append((seq, n - 1))
        spans.append((seq, count))
        return n

    def _logits(
        self, seq: _Seq, idx: int, out: list[tuple[_Sink, TokenEvent]]
    ) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        """The sequence's logits row, in llama.cpp's buffer, after its logits processor and
        constraint mask; None when the processor failed (the sequence is then finished)."""
        assert self._info is not None
        ptr = L.llama_get_logits_ith(self._ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self._info.vocab_size,))
        if seq.req.logits_processor is not None:
            try:
                # In place: the sampler chain reads the same buffer.
                seq.req.logits_processor(seq.req.request_id, logits, seq.generated)
            except Exception as e:
                self._finish(seq, "error", out, error=f"logits processor failed: {e}")
                return None
        if seq.matcher is not None:
            assert self._masks is not None
            self._masks.apply(seq.seq_id, logits)
        return logits

    def _logprobs(
        self, logits: np.ndarray[Any, np.dtype[np.float32]] | None, token: int, n: int | None
    ) -> tuple[float | None, tuple[TopLogprob, ...]]:
        if n is None or logits is None:
            return None, ()
        assert self._pieces is not None
        lp = log_softmax(logits)
        top = (
            tuple(TopLogprob(c.token_id, c.text, c.logprob) for c in candidates(lp, n, self._pieces))
            if n
            else ()
        )
        return float(lp[token]), top

    def _sample(self, seq: _Seq, idx: int, out: list[tuple[_Sink, TokenEvent]]) -> None:
        p = seq.req.params
        logits: np.ndarray[Any, np.dtype[np.float32]] | None = None
        if (
            seq.sampler is None
            or seq.req.logits_processor is not None
            or p.logprobs is not None
            or seq.matcher is not None
        ):
            logits = self._logits(seq, idx, out)
            if logits is None:
                return
        token = (
            int(L.llama_sampler_sample(seq.sampler, self._ctx, idx))
            if seq.sampler is not None or logits is None
            else int(logits.argmax())
        )
        logprob, top = self._logprobs(logits, token, p.logprobs)
        self._accept(seq, token, logprob, top, out)

    def _accept(
        self,
        seq: _Seq,
        token: int,
        logprob: float | None,
        top: tuple[TopLogprob, ...],
        out: list[tuple[_Sink, TokenEvent]],
    ) -> bool:
        """Append a completion token and emit its event; False when that ended the sequence."""
        assert self._pieces is not None
        p = seq.req.params
        seq.n_generated += 1
        seq.generated.append(token)
        reason: FinishReason | None = None
        text = ""
        # A constrained sequence reaches EOS only where its constraint accepts: it always ends there.
        eog = (not p.ignore_eos or seq.matcher is not None) and L.llama_vocab_is_eog(
            self._model.vocab if self._model else None, token
        )
        if eog or token in p.stop_token_ids:
            reason = "stop"
        else:
            seq.tokens.append(token)
            text = seq.text.feed(self._pieces(token))
            if seq.matcher is not None and not seq.matcher.consume_token(token):
                self._finish(seq, "error", out, error=f"the constraint rejected token {token}")
                return False
            if seq.text.stopped or (seq.matcher is not None and seq.matcher.is_stopped()):
                reason = "stop"
            elif seq.n_generated >= p.max_tokens or len(seq.tokens) >= self._context_length:
                reason = "length"
        if reason is None:
            out.append((seq.sink, TokenEvent(token_id=token, text=text, logprob=logprob, top_logprobs=top)))
            return True
        self._finish(seq, reason, out, token=token, text=text, logprob=logprob, top=top)
        return False

    # ---- step controllers ------------------------------------------------------------------

    def _view(
        self, seq: _Seq, ctrl: StepController, idx: int, out: list[tuple[_Sink, TokenEvent]]
    ) -> StepView | None:
        logits = self._logits(seq, idx, out)
        if logits is None:
            return None
        assert self._pieces is not None
        # The next decode overwrites llama.cpp's buffer before the decision is back.
        seq.row = logits.copy()
        return StepView(
            request_id=seq.req.request_id,
            step=seq.n_generated,
            candidates=candidates(log_softmax(seq.row), ctrl.top_k, self._pieces),
            tokens=tuple(seq.generated),
        )

    def _submit(
        self, ctrl: StepController, group: list[tuple[_Seq, StepView]], out: list[tuple[_Sink, TokenEvent]]
    ) -> None:
        sub = Submission(ctrl, [seq for seq, _ in group], Submission.deadline_for(ctrl))
        for seq in sub.seqs:
            seq.awaiting = sub
        self._submissions.append(sub)

        def done(result: Sequence[StepDecision] | StepFailure) -> None:
            with self._cv:
                if sub.result is not None or sub.expired:
                    return  # exactly once; an answer after the backstop is dropped
                sub.result = result
                self._settled.append(sub)
                self._cv.notify()

        try:
            ctrl.submit([view for _, view in group], done)
        except Exception as e:
            done(StepFailure("sampler_trap", f"the step controller failed: {type(e).__name__}: {e}"))

    def _settle(self, sub: Submission, out: list[tuple[_Sink, TokenEvent]]) -> None:
        if sub in self._submissions:
            self._submissions.remove(sub)
        live = [seq for seq in sub.seqs if seq.awaiting is sub]
        for seq in live:
            seq.awaiting = None
        result = sub.result
        if isinstance(result, StepFailure):
            for seq in live:
                self._finish(seq, "error", out, error=result.message, error_code=result.code)
            return
        assert result is not None
        if len(result) != len(sub.seqs):
            message = f"the step controller answered {len(result)} decisions for {len(sub.seqs)} sequences"
            for seq in live:
                self._finish(seq, "error", out, error=message, error_code="sampler_invalid")
            return
        for seq, decision in zip(sub.seqs, result, strict=True):
            if seq in live:
                try:
                    self._decide(seq, decision, out)
                except DecisionError as e:
                    self._finish(seq, "error", out, error=str(e), error_code="sampler_invalid")

    def _expire(self, out: list[tuple[_Sink, TokenEvent]]) -> None:
        now = time.monotonic()
        for sub in [s for s in self._submissions if s.deadline <= now]:
            with self._cv:
                if sub.result is not None:
                    continue  # answered just in time: settled on the next pass
                sub.expired = True
            self._submissions.remove(sub)
            message = f"the step controller did not decide within {sub.controller.budget_s:g} s"
            for seq in sub.seqs:
                if seq.awaiting is sub:
                    seq.awaiting = None
                    self._finish(seq, "error", out, error=message, error_code="sampler_timeout")

    def _decide(self, seq: _Seq, d: StepDecision, out: list[tuple[_Sink, TokenEvent]]) -> None:
        """Apply one decision; DecisionError for one the sequence cannot take."""
        assert self._info is not None and seq.row is not None and seq.rng is not None
        row, seq.row = seq.row, None
        n_vocab, p = self._info.vocab_size, seq.req.params
        if d.kind == "stop":
            self._finish(seq, "stop", out)
            return
        if d.kind in ("token", "force"):
            if d.kind == "token" and len(d.tokens) != 1:
                raise DecisionError(f"a token decision names {len(d.tokens)} tokens, not one")
            if not d.tokens:
                raise DecisionError("a force decision names no token")
            check_ids(d.tokens, n_vocab)
            if seq.matcher is not None and seq.matcher.validate_tokens(list(d.tokens)) != len(d.tokens):
                raise DecisionError(f"the constraint forbids the {d.kind} decision's tokens {list(d.tokens)}")
            logprob, top = self._logprobs(row, d.tokens[0], p.logprobs)
            for i, token in enumerate(d.tokens):
                if not self._accept(seq, token, logprob if i == 0 else None, top if i == 0 else (), out):
                    return
            return
        if d.kind == "allow":
            check_ids(d.tokens, n_vocab)
            row = allowed(row, d.tokens)
        elif d.kind == "bias":
            check_ids([t for t, _ in d.bias], n_vocab)
            row = biased(row, d.bias)
        elif d.kind != "sample":
            raise DecisionError(f"unknown decision kind {d.kind!r}")
        token = sample_row(row, p, seq.rng)
        logprob, top = self._logprobs(row, token, p.logprobs)
        self._accept(seq, token, logprob, top, out)

    def _finish(
        self,
        seq: _Seq,
        reason: FinishReason,
        out: list[tuple[_Sink, TokenEvent]],
        *,
        token: int | None = None,
        text: str = "",
        logprob: float | None = None,
        top: tuple[TopLogprob, ...] = (),
        error: str | None = None,
        error_code: str | None = None,
    ) -> None:
        if reason in ("stop", "length"):
            text += seq.text.flush()
        kv: KVSnapshot | None = None
        if seq.seq_id >= 0:
            if seq.req.export_kv and reason in ("stop", "length") and self._ctx is not None:
                kv = KVSnapshot(
                    token_ids=tuple(seq.tokens[: seq.n_past]),
                    data=native.state_seq_get(self._ctx, seq.seq_id),
                    fingerprint=self._fingerprint,
                )
            L.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            self._free_ids.append(seq.seq_id)
            seq.seq_id = -1
            if seq in self._active:
                self._active.remove(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)
        if seq.sampler is not None:
            L.llama_sampler_free(seq.sampler)
            seq.sampler = None
        seq.awaiting, seq.row = None, None
        if (ctrl := seq.req.step_controller) is not None:
            try:
                ctrl.release(seq.req.request_id)
            except Exception:
                log.exception("step controller release(%s) failed", seq.req.request_id)
        self._by_id.pop(seq.req.request_id, None)
        with self._cv:
            self._live_ids.discard(seq.req.request_id)
        out.append(
            (
                seq.sink,
                TokenEvent(
                    token_id=token,
                    text=text,
                    logprob=logprob,
                    top_logprobs=top,
                    finish_reason=reason,
                    prompt_tokens=seq.n_prompt,
                    completion_tokens=seq.n_generated,
                    cached_prompt_tokens=seq.cached,
                    kv=kv,
                    error=error,
                    error_code=error_code,
                ),
            )
        )


def _put_all(items: list[tuple[asyncio.Queue[TokenEvent], TokenEvent]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)
