"""Pure translation between the engine seam (engines/base.py) and TensorRT-LLM's LLM API.

Nothing here imports tensorrt_llm or torch, so all of it is unit-tested on machines without a GPU.
The shapes were checked against NVIDIA/TensorRT-LLM sources (see engine.py for paths and commits):
`SamplingParams` fields, `CompletionOutput` (cumulative `token_ids`/`text`, `finish_reason` in
{stop, length, timeout, cancelled}, `logprobs` as floats or `{token_id: Logprob}` per token), the
logits-processor call `(req_id, logits[beam, 1, vocab], [tokens of beam 0 incl. prompt], stream_ptr,
client_id)` and the iteration-stats dict (`numActiveRequests`, `kvCacheStats.usedNumBlocks`, ...).

Constraints map to TensorRT-LLM's guided decoding: `GuidedDecodingParams(json=..., regex=...,
grammar=..., json_object=...)` on `SamplingParams.guided_decoding`, enforced by the backend the LLM
was built with (`guided_decoding_backend`, "xgrammar" or "llguidance"; Realm defaults it to
"llguidance", the library the llama.cpp engine uses, so a constraint means the same on both).
Under llguidance TensorRT-LLM compiles `grammar` as Lark (its LLGuidanceMatcherFactory), so GBNF
is converted with llguidance's own converter first; xgrammar reads GBNF (EBNF) and cannot read Lark.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from ..engines.base import (
    Constraint,
    ConstraintError,
    EngineStats,
    FinishReason,
    LogitsProcessor,
    SamplingParams,
    TokenEvent,
    TopLogprob,
)
from ..engines.constraints import grammar_of, json_layout
from ..engines.text_stream import TextStream
from ..spec.runtime_config import ModelConfig

KV_PREFIX = "kv_cache_"  # engine_args `kv_cache_<field>` → KvCacheConfig(<field>=...)
GUIDED_BACKEND = "guided_decoding_backend"  # the LLM argument naming the guided-decoding library


def llm_kwargs(cfg: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLM(...) keyword arguments, KvCacheConfig(...) keyword arguments) for a model.

    engine_args pass through unchanged (TRT-LLM rejects unknown keys itself), except `kv_cache_*`
    keys, which become KvCacheConfig fields. Block reuse (prefix caching) is on unless disabled, and
    guided decoding (constraints) runs on llguidance unless engine_args name another backend."""
    llm: dict[str, Any] = {"max_batch_size": cfg.max_batch, GUIDED_BACKEND: "llguidance"}
    if cfg.context_length is not None:
        llm["max_seq_len"] = cfg.context_length
    kv: dict[str, Any] = {"enable_block_reuse": True}
    for key, value in cfg.engine_args.items():
        if key.startswith(KV_PREFIX):
            kv[key.removeprefix(KV_PREFIX)] = value
        else:
            llm[key] = value
    return llm, kv


def sampling_kwargs(p: SamplingParams, *, random_seed: Callable[[], int] | None = None) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.SamplingParams`.

    Stop strings are NOT passed: TRT-LLM matches them as token-id sequences encoded in isolation
    (misses a stop that tokenizes differently in context) and strips them only at the end, after
    the text has streamed. The adapter applies them on the text through TextStream instead.
    TRT-LLM's default seed is a fixed 0, so an unseeded request gets a fresh random seed."""
    kw: dict[str, Any] = {
        "max_tokens": p.max_tokens,
        "ignore_eos": p.ignore_eos,
        "detokenize": True,
        "seed": p.seed if p.seed is not None else (random_seed or (lambda: secrets.randbits(63)))(),
    }
    if p.greedy:
        kw["top_k"] = 1  # TRT-LLM wants temperature > 0; greedy is top_k=1 with the default temperature
    else:
        kw["temperature"] = p.temperature
        if p.top_p < 1.0:
            kw["top_p"] = p.top_p
        if p.top_k > 0:
            kw["top_k"] = p.top_k
        if p.min_p > 0.0:
            kw["min_p"] = p.min_p
    if p.repetition_penalty != 1.0:
        kw["repetition_penalty"] = p.repetition_penalty
    if p.presence_penalty != 0.0:
        kw["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty != 0.0:
        kw["frequency_penalty"] = p.frequency_penalty
    if p.stop_token_ids:
        kw["stop_token_ids"] = list(p.stop_token_ids)
    if p.logprobs is not None:
        kw["logprobs"] = max(p.logprobs, 1)  # TRT-LLM treats 0 as "off"; ours means "chosen token only"
    return kw


def check_guided(constraint: Constraint, backend: str | None) -> None:
    """ConstraintError unless `backend` can enforce `constraint` and its text compiles.

    The grammar is checked by llguidance without the model's tokenizer (the tokenizer-dependent
    part, token healing at lexeme boundaries, cannot fail for a grammar that compiles)."""
    if backend not in ("llguidance", "xgrammar"):
        raise ConstraintError(
            "constraints need TensorRT-LLM's guided decoding: set engineArgs.guided_decoding_backend "
            'to "llguidance" or "xgrammar"'
        )
    if backend == "xgrammar" and constraint.kind == "lark":
        raise ConstraintError("Lark grammars need the llguidance guided-decoding backend; use GBNF")
    error = llguidance.LLMatcher.validate_grammar(grammar_of(constraint))
    if error:
        raise ConstraintError(f"invalid {constraint.kind} constraint: {error.strip()}")


def guided_decoding_kwargs(constraint: Constraint, backend: str | None) -> dict[str, Any]:
    """Keyword arguments of `tensorrt_llm.llmapi.GuidedDecodingParams` for a checked constraint.

    Under llguidance, JSON carries the same layout options the llama.cpp engine compiles with
    (`x-guidance`, unless the schema sets its own), so both engines write the same compact JSON."""
    kind, value = constraint.kind, constraint.value
    if kind in ("json_schema", "json_object"):
        if backend != "llguidance":
            return {"json": value} if kind == "json_schema" else {"json_object": True}
        schema: Any = json.loads(value) if kind == "json_schema" else {"type": "object"}
        if isinstance(schema, dict) and "x-guidance" not in schema:
            schema = {**schema, "x-guidance": dict(json_layout())}
        return {"json": json.dumps(schema)}
    if kind == "regex":
        return {"regex": value}
    if kind == "gbnf" and backend == "llguidance":
        return {"grammar": gbnf_to_lark(value)}
    return {"grammar": value}  # Lark under llguidance, GBNF under xgrammar


class LogitsAdapter:
    """Our LogitsProcessor (a float32 numpy row, in place) as TRT-LLM's callable.

    Cost: the row is copied device→host, processed, and copied back every step for this request
    (2 x vocab x 4 bytes plus a stream sync, ~1.2 MB for a 150k vocabulary): fine for masks and
    biases, but it serializes the step on the GPU. The explicit five parameters matter: TRT-LLM
    checks the callable's signature (4 or 5 parameters)."""

    def __init__(self, proc: LogitsProcessor, request_id: str, n_prompt: int) -> None:
        self.proc, self.request_id, self.n_prompt = proc, request_id, n_prompt

    def __call__(
        self,
        req_id: int,
        logits: Any,
        token_ids: Sequence[Sequence[int]],
        stream_ptr: int | None,
        client_id: Any,
    ) -> None:
        # The TensorRT (C++) backend hands over the stream the logits live on; the PyTorch one None.
        with contextlib.nullcontext() if stream_ptr is None else _on_stream(stream_ptr):
            row = logits.reshape(-1, logits.shape[-1])[0]  # beam 0 of [beam, 1, vocab]
            host = row.float().cpu()  # a CPU tensor; for a CPU float32 row this is the row itself
            arr = host.numpy()  # writable float32 view of `host`
            # TRT-LLM passes the whole sequence (prompt + generated); ours sees the generated tokens.
            self.proc(self.request_id, arr, list(token_ids[0][self.n_prompt :]) if token_ids else [])
            row.copy_(host)  # back into the engine's tensor (converting dtype/device as needed)


def _on_stream(stream_ptr: int) -> Any:
    import torch  # only reached on a GPU node with the TensorRT backend

    return torch.cuda.stream(torch.cuda.ExternalStream(stream_ptr))


def parse_iteration_stats(stat: Mapping[str, Any] | str) -> EngineStats | None:
    """One entry of `LLM.get_stats()` (a dict, or a JSON string in older versions) → EngineStats."""
    d: Any = json.loads(stat) if isinstance(stat, str) else stat
    if not isinstance(d, Mapping) or "numActiveRequests" not in d:
        return None
    kv = d.get("kvCacheStats") or {}
    per_block = int(kv.get("tokensPerBlock", 0))
    return EngineStats(
        running=int(d["numActiveRequests"]),
        waiting=int(d.get("numQueuedRequests", 0)),
        kv_used_tokens=int(kv.get("usedNumBlocks", 0)) * per_block,
        kv_capacity_tokens=int(kv.get("maxNumBlocks", 0)) * per_block,
    )


_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "cancelled": "cancelled"}


class StreamMapper:
    """Cumulative `CompletionOutput` snapshots of one request → TokenEvent deltas.

    TRT-LLM's incremental detokenizer already holds back an unfinished UTF-8 character; the text
    delta of each snapshot goes through TextStream for stop strings, exactly as in llama.cpp.
    When a stop string completes, `finished` is set and the caller aborts the request."""

    def __init__(self, params: SamplingParams, n_prompt: int, piece: Callable[[int], str]) -> None:
        self.params, self.n_prompt, self.piece = params, n_prompt, piece
        self.text = TextStream(params.stop)
        self.finished = False
        self._n_tokens = 0  # tokens seen (TRT strips a matched stop token from the final snapshot)
        self._n_logprobs = 0
        self._seen_text = ""

    def step(
        self,
        token_ids: Sequence[int],
        text: str,
        finish_reason: str | None = None,
        logprobs: Sequence[Any] | None = None,
    ) -> list[TokenEvent]:
        if self.finished:
            return []
        new_ids = list(token_ids[self._n_tokens :])
        self._n_tokens = max(self._n_tokens, len(token_ids))
        # TRT-LLM builds each snapshot's text as previous text + new text, so the delta is a suffix.
        out = self.text.feed(text[len(self._seen_text) :].encode())
        if len(text) > len(self._seen_text):
            self._seen_text = text
        lps = [self._logprob(t, lp) for t, lp in zip(new_ids, self._new_logprobs(logprobs), strict=False)]
        lps += [(None, ())] * (len(new_ids) - len(lps))
        reason: FinishReason | None = "stop" if self.text.stopped else None
        error: str | None = None
        if reason is None and finish_reason is not None:
            reason = _FINISH.get(finish_reason, "error")
            error = None if reason != "error" else f"TensorRT-LLM finished the request: {finish_reason}"
            if reason in ("stop", "length"):
                out += self.text.flush()
        events = [
            TokenEvent(token_id=t, text="", logprob=lp, top_logprobs=top)
            for t, (lp, top) in zip(new_ids, lps, strict=True)
        ]
        if events:
            events[-1] = TokenEvent(
                token_id=new_ids[-1], text=out, logprob=lps[-1][0], top_logprobs=lps[-1][1]
            )
        elif out or reason is not None:
            events.append(TokenEvent(token_id=None, text=out))
        if reason is not None:
            events[-1] = self._final(events[-1], reason, error)
        return events

    def fail(self, reason: FinishReason, error: str | None = None) -> TokenEvent:
        """The final event for a stream that ended without TRT-LLM finishing it (cancel, crash)."""
        return self._final(TokenEvent(token_id=None, text=""), reason, error)

    def _final(self, ev: TokenEvent, reason: FinishReason, error: str | None) -> TokenEvent:
        self.finished = True
        return TokenEvent(
            token_id=ev.token_id,
            text=ev.text,
            logprob=ev.logprob,
            top_logprobs=ev.top_logprobs,
            finish_reason=reason,
            prompt_tokens=self.n_prompt,
            completion_tokens=self._n_tokens,
            cached_prompt_tokens=0,  # TRT-LLM's block reuse is not reported per request (docs/trtllm.md)
            kv=None,  # no per-request KV export through the LLM API
            error=error,
        )

    def _new_logprobs(self, logprobs: Sequence[Any] | None) -> list[Any]:
        if self.params.logprobs is None or not logprobs:
            return []
        new = list(logprobs[self._n_logprobs :])
        self._n_logprobs = max(self._n_logprobs, len(logprobs))
        return new

    def _logprob(self, token: int, entry: Any) -> tuple[float | None, tuple[TopLogprob, ...]]:
        if isinstance(entry, int | float):
            return float(entry), ()
        if not isinstance(entry, Mapping):
            return None, ()
        vals: dict[int, float] = {int(t): float(_value(v)) for t, v in entry.items()}
        k = self.params.logprobs or 0
        best = sorted(vals.items(), key=lambda kv: kv[1], reverse=True)[:k]
        return vals.get(token), tuple(TopLogprob(t, self.piece(t), lp) for t, lp in best)


def _value(v: Any) -> Any:
    return v.logprob if hasattr(v, "logprob") else v  # a `Logprob(logprob, rank)` or a bare float
