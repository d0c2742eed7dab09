"""TensorRT-LLM backend: a thin adapter over its public high-level LLM API.

Checked against NVIDIA/TensorRT-LLM sources (read through the code index, not run):
- tensorrt_llm/llmapi/llm.py @ 4c05a74891e4df8066f08ed4ce14b0972abe4e25: `LLM(model, tokenizer=None,
  ..., **kwargs)` validates kwargs against the LlmArgs fields; `generate_async(inputs, sampling_params,
  ..., streaming=False, ..., cache_salt=None) -> RequestOutput`; `tokenizer`; `get_stats(timeout)`
  (needs `enable_iter_perf_stats` on the PyTorch backend); `shutdown()`; `LLM` is the PyTorch backend.
- tensorrt_llm/sampling_params.py @ 000a01de66f0eab4ab05640711f0253f50f5209c: SamplingParams fields,
  `LogitsProcessor.__call__(req_id, logits, token_ids, stream_ptr, client_id)`, stop handling.
- tensorrt_llm/executor/result.py @ 005bc848893f575ec14b45d6b13139360d67c790: `async for` over a
  streaming result, `outputs[0].token_ids/.text/.finish_reason/.logprobs`, `abort()`, `finished`.
- tensorrt_llm/llmapi/tokenizer.py @ 89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0: TransformersTokenizer
  `encode/decode/apply_chat_template`; incremental detokenization holds back a partial character.
- tensorrt_llm/llmapi/__init__.py @ 036a60f7ff9257595c96a578560651da5c4df577: `KvCacheConfig`.
- tensorrt_llm/sampling_params.py @ 000a01de66f0eab4ab05640711f0253f50f5209c: `GuidedDecodingParams(json,
  regex, grammar, json_object, structural_tag)`, at most one set, on `SamplingParams.guided_decoding`;
  tensorrt_llm/llmapi/__init__.py @ 036a60f7ff9257595c96a578560651da5c4df577 exports it.
- tensorrt_llm/llmapi/llm_args.py @ fcd3f31682808ae56118ae43c1d7864a3a945e6f: `guided_decoding_backend:
  Optional[Literal["xgrammar", "llguidance"]]` (default None: no guided decoding; llguidance on the
  PyTorch backend only).
- tensorrt_llm/_torch/pyexecutor/grammar_matcher.py @ 0fccc5b97dd7b23c438e740b3bf4dcde607266c4: the
  llguidance backend compiles `json_object` as `{"type": "object"}`, `json` as a JSON schema, `regex`,
  and `grammar` as Lark (not EBNF); xgrammar compiles `grammar` as EBNF (GBNF).
- examples/llm-api/llm_logits_processor.py @ 17fb5e62cd9a2a847755c001eca97a23f6f69401 and the
  PyTorch decoder runner's `_apply_logits_processors`: logits arrive as [beam, 1, vocab], token ids
  are `request.get_tokens(beam)` (prompt included), stream_ptr is None on the PyTorch backend.

tensorrt_llm is imported only inside start(): this module imports on machines without a GPU.
Batching is TRT-LLM's in-flight batching; this class submits one request and maps its stream.

Step controllers (EngineRequest.step_controller) are refused with EngineError: TensorRT-LLM calls
a per-request logits processor synchronously inside its step, one request at a time, so it can
neither batch one controller's sequences into one call nor leave a waiting sequence out of the
step while the others go on, which the seam promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ..engines.base import (
    ChatMessage,
    Constraint,
    Engine,
    EngineError,
    EngineRequest,
    EngineStats,
    ModelInfo,
    TokenEvent,
)
from ..spec.runtime_config import ModelConfig
from .translate import (
    GUIDED_BACKEND,
    LogitsAdapter,
    StreamMapper,
    check_guided,
    guided_decoding_kwargs,
    llm_kwargs,
    parse_iteration_stats,
    sampling_kwargs,
)

log = logging.getLogger("realm.engine.trtllm")

MISSING = "TensorRT-LLM is not installed: pip install 'realm[trtllm]' on a GPU node"
STATS_INTERVAL_S = 1.0


def _import_trt() -> Any:
    try:
        import tensorrt_llm
    except ImportError as e:
        raise EngineError(MISSING) from e
    return tensorrt_llm


def source_version(source: str) -> str:
    """A shallow digest of a checkpoint folder: its JSON files and the names and sizes of the rest
    (reading tens of GB of weights at every start would be too slow). A hub name hashes as text."""
    h = hashlib.sha256()
    root = Path(source).expanduser()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
        if p.suffix == ".json":
            h.update(p.read_bytes())
    if not files:
        h.update(source.encode())
    return h.hexdigest()[:12]


class TrtLlmEngine(Engine):
    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self._llm: Any = None
        self._sampling_cls: Any = None
        self._guided_cls: Any = None
        self._guided_backend: str | None = None
        self._info: ModelInfo | None = None
        self._salted = False  # whether this TRT-LLM version isolates prefix reuse by cache_salt
        self._inflight: dict[str, Any] = {}
        self._last_stats: EngineStats | None = None
        self._poller: asyncio.Task[None] | None = None
        self.kv_restores_ignored = 0  # snapshots offered and recomputed instead (docs/trtllm.md)

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineError(f"model {self.cfg.name} is not loaded")
        return self._info

    async def start(self) -> None:
        trt = _import_trt()
        from tensorrt_llm.llmapi import GuidedDecodingParams, KvCacheConfig

        kwargs, kv = llm_kwargs(self.cfg)
        self._guided_backend = kwargs.get(GUIDED_BACKEND)
        self._guided_cls = GuidedDecodingParams
        self._salted = "cache_salt" in inspect.signature(trt.LLM.generate_async).parameters
        if not self._salted and kv.get("enable_block_reuse"):
            # Without salts tenants would share cached prefixes: isolation wins over speed.
            log.warning("this TensorRT-LLM has no cache_salt; prefix block reuse is turned off")
            kv["enable_block_reuse"] = False
        self._llm = await asyncio.to_thread(
            trt.LLM, model=self.cfg.source, kv_cache_config=KvCacheConfig(**kv), **kwargs
        )
        self._sampling_cls = trt.SamplingParams
        hf = getattr(self._llm.tokenizer, "tokenizer", self._llm.tokenizer)
        args = getattr(self._llm, "args", None)
        self._info = ModelInfo(
            name=self.cfg.name,
            engine="trtllm",
            version=await asyncio.to_thread(source_version, self.cfg.source),
            context_length=self.cfg.context_length or getattr(args, "max_seq_len", None) or 8192,
            vocab_size=len(hf),
            max_batch=int(kwargs["max_batch_size"]),
            has_chat_template=getattr(hf, "chat_template", None) is not None,
            metadata={"tensorrt_llm": str(getattr(trt, "__version__", "?"))},
        )
        if kwargs.get("enable_iter_perf_stats"):
            self._poller = asyncio.create_task(self._poll_stats())

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for out in list(self._inflight.values()):
            _abort(out)
        if self._llm is not None:
            await asyncio.to_thread(self._llm.shutdown)
            self._llm = None

    def _loaded(self) -> Any:
        if self._llm is None:
            raise EngineError(f"model {self.cfg.name} is not loaded")
        return self._llm

    # ---- text ------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        # transformers' tokenizers read control tokens in text unless asked to split them as text.
        tokenizer = self._loaded().tokenizer
        if parse_special:
            return list(tokenizer.encode(text, add_special_tokens=add_special))
        return list(tokenizer(text, add_special_tokens=add_special, split_special_tokens=True)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._loaded().tokenizer.decode(list(token_ids)))

    def check_constraint(self, constraint: Constraint) -> None:
        check_guided(constraint, self._guided_backend)

    def _piece(self, token_id: int) -> str:
        return self.decode([token_id])

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        conv = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return str(
                self._loaded().tokenizer.apply_chat_template(
                    conv, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            )
        except (ValueError, TypeError) as e:  # e.g. the tokenizer has no chat template
            raise EngineError(str(e)) from e

    # ---- requests --------------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        llm = self._loaded()
        prompt = list(request.prompt_token_ids)
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.info.context_length:
            raise EngineError(
                f"the prompt is {len(prompt)} tokens; this model's context holds "
                f"{self.info.context_length} including at least one completion token"
            )
        if request.step_controller is not None:
            raise EngineError("step controllers are not supported on TensorRT-LLM")
        if request.restore_kv is not None:
            self.kv_restores_ignored += 1  # recomputed by prefill (or hit TRT-LLM's own block reuse)
        kw = sampling_kwargs(request.params)
        if request.logits_processor is not None:
            kw["logits_processor"] = LogitsAdapter(request.logits_processor, request.request_id, len(prompt))
        if request.constraint is not None:
            check_guided(request.constraint, self._guided_backend)
            guided = guided_decoding_kwargs(request.constraint, self._guided_backend)
            kw["guided_decoding"] = self._guided_cls(**guided)
        extra = {"cache_salt": request.cache_salt} if self._salted and request.cache_salt else {}
        try:
            out = llm.generate_async(prompt, self._sampling_cls(**kw), streaming=True, **extra)
        except (ValueError, TypeError, RuntimeError) as e:
            raise EngineError(f"TensorRT-LLM refused the request: {e}") from e
        self._inflight[request.request_id] = out
        mapper = StreamMapper(request.params, len(prompt), self._piece)
        try:
            async for snapshot in out:
                c = snapshot.outputs[0]
                for event in mapper.step(c.token_ids, c.text, c.finish_reason, c.logprobs):
                    yield event
                if mapper.finished:
                    break
            if not mapper.finished:
                yield mapper.fail("error", "the stream ended without a finish reason")
        except Exception as e:  # a failure inside TRT-LLM surfaces here; report it on the stream
            if not mapper.finished:
                log.exception("request %s failed in TensorRT-LLM", request.request_id)
                yield mapper.fail("error", f"TensorRT-LLM failed: {e}")
        finally:
            self._inflight.pop(request.request_id, None)
            if not getattr(out, "finished", True):
                _abort(out)  # a stop string matched, or the reader went away

    def cancel(self, request_id: str) -> None:
        out = self._inflight.get(request_id)
        if out is not None:
            _abort(out)  # TRT-LLM then finishes the stream with finish_reason "cancelled"

    def stats(self) -> EngineStats:
        if self._last_stats is not None:
            return self._last_stats
        return EngineStats(running=len(self._inflight), waiting=0, kv_used_tokens=0, kv_capacity_tokens=0)

    async def _poll_stats(self) -> None:
        while self._llm is not None:
            try:
                for stat in await asyncio.to_thread(self._llm.get_stats, STATS_INTERVAL_S):
                    self._last_stats = parse_iteration_stats(stat) or self._last_stats
            except Exception:
                log.debug("TensorRT-LLM stats unavailable", exc_info=True)
            await asyncio.sleep(STATS_INTERVAL_S)


def _abort(out: Any) -> None:
    with contextlib.suppress(Exception):
        out.abort()
