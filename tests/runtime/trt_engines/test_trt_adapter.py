"""The TensorRT-LLM adapter's translation logic, without TensorRT-LLM.

TensorRT-LLM needs an NVIDIA GPU and is not installed here. The pure functions (sampling params,
cumulative outputs → token events, logits-processor adaptation, stats parsing) are tested
directly; where TensorRT-LLM objects are needed, a tiny fake stands in at the TensorRT-LLM seam
(no GPU here): a numpy-backed tensor for the logits, and a fake `tensorrt_llm` module whose
`LLM.generate_async` replays scripted cumulative snapshots. None of this shows that the adapter
runs against a real TensorRT-LLM; docs/trtllm.md says what was and was not run.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from realm.runtime.engine_factory import create_engine
from realm.runtime.engines.base import (
    Constraint,
    ConstraintError,
    EngineError,
    EngineRequest,
    KVSnapshot,
    SamplingParams,
    StepController,
    StepDone,
    StepView,
    TokenEvent,
)
from realm.runtime.spec.runtime_config import ModelConfig
from realm.runtime.trt_engines.engine import MISSING, TrtLlmEngine
from realm.runtime.trt_engines.translate import (
    LogitsAdapter,
    StreamMapper,
    check_guided,
    guided_decoding_kwargs,
    llm_kwargs,
    parse_iteration_stats,
    sampling_kwargs,
)


def _cfg(**kw: Any) -> ModelConfig:
    return ModelConfig(name="x", engine="trtllm", source="/models/x", **kw)


# ---- construction without TensorRT-LLM -------------------------------------------------------


def test_loader_returns_the_adapter_without_importing_tensorrt_llm() -> None:
    engine = create_engine(_cfg())
    assert type(engine) is TrtLlmEngine
    assert "tensorrt_llm" not in sys.modules


async def test_start_without_tensorrt_llm_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # makes `import tensorrt_llm` fail
    with pytest.raises(EngineError) as e:
        await TrtLlmEngine(_cfg()).start()
    assert str(e.value) == MISSING
    assert "pip install 'realm[trtllm]'" in str(e.value)


# ---- config and sampling -----------------------------------------------------------------------


def test_engine_args_pass_through_and_kv_cache_keys_go_to_kv_cache_config() -> None:
    cfg = _cfg(
        max_batch=32,
        context_length=4096,
        engine_args={
            "tensor_parallel_size": 2,
            "kv_cache_free_gpu_memory_fraction": 0.85,
            "kv_cache_enable_block_reuse": False,
        },
    )
    llm, kv = llm_kwargs(cfg)
    assert llm == {
        "max_batch_size": 32,
        "max_seq_len": 4096,
        "tensor_parallel_size": 2,
        "guided_decoding_backend": "llguidance",
    }
    assert kv == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.85}
    assert llm_kwargs(_cfg())[1] == {"enable_block_reuse": True}  # prefix reuse on by default
    assert llm_kwargs(_cfg(engine_args={"max_batch_size": 8}))[0]["max_batch_size"] == 8
    xgrammar = llm_kwargs(_cfg(engine_args={"guided_decoding_backend": "xgrammar"}))[0]
    assert xgrammar["guided_decoding_backend"] == "xgrammar"


LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def test_constraints_map_to_guided_decoding_under_llguidance() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    as_json = guided_decoding_kwargs(Constraint(kind="json_schema", value=json.dumps(schema)), "llguidance")
    assert json.loads(as_json["json"]) == {**schema, "x-guidance": LAYOUT}
    own = {"type": "object", "x-guidance": {"whitespace_flexible": True}}
    assert (
        json.loads(
            guided_decoding_kwargs(Constraint(kind="json_schema", value=json.dumps(own)), "llguidance")[
                "json"
            ]
        )
        == own
    )
    obj = guided_decoding_kwargs(Constraint(kind="json_object"), "llguidance")
    assert json.loads(obj["json"]) == {"type": "object", "x-guidance": LAYOUT}
    assert guided_decoding_kwargs(Constraint(kind="regex", value="[0-9]+"), "llguidance") == {
        "regex": "[0-9]+"
    }
    lark = 'start: "yes" | "no"'
    assert guided_decoding_kwargs(Constraint(kind="lark", value=lark), "llguidance") == {"grammar": lark}
    gbnf = guided_decoding_kwargs(Constraint(kind="gbnf", value='root ::= "yes" | "no"'), "llguidance")
    # TRT-LLM's llguidance backend reads `grammar` as Lark.
    assert gbnf["grammar"].startswith("%llguidance {}") and 'start: "yes"' in gbnf["grammar"]


def test_constraints_map_to_guided_decoding_under_xgrammar() -> None:
    schema = '{"type": "object"}'
    assert guided_decoding_kwargs(Constraint(kind="json_schema", value=schema), "xgrammar") == {
        "json": schema
    }
    assert guided_decoding_kwargs(Constraint(kind="json_object"), "xgrammar") == {"json_object": True}
    gbnf = 'root ::= "yes" | "no"'
    assert guided_decoding_kwargs(Constraint(kind="gbnf", value=gbnf), "xgrammar") == {"grammar": gbnf}


def test_check_guided_refuses_what_the_backend_cannot_enforce() -> None:
    with pytest.raises(ConstraintError, match="guided_decoding_backend"):
        check_guided(Constraint(kind="json_object"), None)
    with pytest.raises(ConstraintError, match="Lark grammars need the llguidance"):
        check_guided(Constraint(kind="lark", value='start: "a"'), "xgrammar")
    with pytest.raises(ConstraintError, match="unclosed character class"):
        check_guided(Constraint(kind="regex", value="[a-z"), "llguidance")
    with pytest.raises(ConstraintError, match="not valid JSON"):
        check_guided(Constraint(kind="json_schema", value="{oops"), "llguidance")
    check_guided(Constraint(kind="gbnf", value='root ::= "a"'), "xgrammar")


def test_sampling_params_map_field_by_field() -> None:
    p = SamplingParams(
        max_tokens=40,
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        stop=("END",),
        stop_token_ids=(7, 9),
        seed=123,
        logprobs=3,
    )
    assert sampling_kwargs(p) == {
        "max_tokens": 40,
        "ignore_eos": False,
        "detokenize": True,
        "seed": 123,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "stop_token_ids": [7, 9],
        "logprobs": 3,
    }  # no "stop": stop strings are applied on the text by TextStream


def test_greedy_defaults_and_unseeded_requests() -> None:
    kw = sampling_kwargs(SamplingParams(temperature=0.0, logprobs=0), random_seed=lambda: 42)
    assert kw["top_k"] == 1 and "temperature" not in kw and "top_p" not in kw
    assert kw["seed"] == 42  # TRT-LLM's own default seed is a fixed 0
    assert kw["logprobs"] == 1  # 0 is "off" in TRT-LLM; ours means the chosen token only
    defaults = sampling_kwargs(SamplingParams(), random_seed=lambda: 1)
    assert defaults == {
        "max_tokens": 16,
        "ignore_eos": False,
        "detokenize": True,
        "seed": 1,
        "temperature": 1.0,
    }


# ---- cumulative outputs → events ---------------------------------------------------------------


def _texts(events: Sequence[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def test_cumulative_snapshots_become_deltas_with_usage_on_the_final_event() -> None:
    m = StreamMapper(SamplingParams(max_tokens=4), n_prompt=5, piece=str)
    e1 = m.step([10], "Hel")
    e2 = m.step([10, 11, 12], "Hello wo")  # two tokens in one step
    e3 = m.step([10, 11, 12, 13], "Hello world", "length")
    assert [e.token_id for e in e1 + e2 + e3] == [10, 11, 12, 13]
    assert [e.text for e in e2] == ["", "lo wo"]  # the step's text rides on its last token
    assert _texts(e1 + e2 + e3) == "Hello world"
    final = e3[-1]
    assert final.finish_reason == "length"
    assert (final.prompt_tokens, final.completion_tokens, final.cached_prompt_tokens) == (5, 4, 0)
    assert final.kv is None
    assert all(e.finish_reason is None for e in e1 + e2)
    assert m.finished and m.step([10, 11, 12, 13, 14], "Hello world!") == []


def test_stop_string_is_held_back_and_finishes_the_stream() -> None:
    m = StreamMapper(SamplingParams(stop=("END",)), n_prompt=2, piece=str)
    events = m.step([1], "the E") + m.step([1, 2], "the EN") + m.step([1, 2, 3], "the END and")
    assert _texts(events) == "the "
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 3
    assert m.finished  # the engine aborts the TRT-LLM request on this


def test_false_alarm_is_released_at_the_end_and_stop_token_stripping_keeps_the_count() -> None:
    m = StreamMapper(SamplingParams(stop=("END",)), n_prompt=1, piece=str)
    events = m.step([4, 5], "ok E") + m.step([4], "ok E", "stop")  # TRT stripped the stop token id
    assert _texts(events) == "ok E"
    assert events[-1].finish_reason == "stop" and events[-1].token_id is None
    assert events[-1].completion_tokens == 2


def test_cancel_timeout_and_failure_map_to_our_finish_reasons() -> None:
    m = StreamMapper(SamplingParams(), n_prompt=1, piece=str)
    assert m.step([1], "a", "cancelled")[-1].finish_reason == "cancelled"
    t = StreamMapper(SamplingParams(), n_prompt=1, piece=str).step([], "", "timeout")[-1]
    assert t.finish_reason == "error" and t.error is not None and "timeout" in t.error
    f = StreamMapper(SamplingParams(), n_prompt=3, piece=str).fail("error", "boom")
    assert (f.finish_reason, f.error, f.prompt_tokens) == ("error", "boom", 3)


@dataclass
class _Logprob:
    logprob: float
    rank: int | None = None


def test_logprobs_from_floats_and_from_top_k_dicts() -> None:
    m = StreamMapper(SamplingParams(logprobs=2), n_prompt=1, piece=lambda t: f"<{t}>")
    top = {7: _Logprob(-0.1), 8: _Logprob(-2.0), 9: _Logprob(-3.0)}
    (ev,) = m.step([7], "x", None, [top])
    assert ev.logprob == -0.1
    assert [(t.token_id, t.token, t.logprob) for t in ev.top_logprobs] == [(7, "<7>", -0.1), (8, "<8>", -2.0)]
    floats = StreamMapper(SamplingParams(logprobs=0), n_prompt=1, piece=str)
    evs = floats.step([1, 2], "ab", None, [-0.5, -1.5])
    assert [(e.logprob, e.top_logprobs) for e in evs] == [(-0.5, ()), (-1.5, ())]
    off = StreamMapper(SamplingParams(), n_prompt=1, piece=str).step([1], "a", None, [-0.5])
    assert off[0].logprob is None


# ---- logits processor --------------------------------------------------------------------------


class _FakeTensor:
    """Fake at the TensorRT-LLM seam (no GPU/torch here): the few torch.Tensor methods the adapter
    uses, over numpy. `float()` copies, like a bf16 device tensor converted for the host."""

    def __init__(self, a: npt.NDArray[Any]) -> None:
        self.a = a

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.a.shape)

    def reshape(self, *shape: int) -> _FakeTensor:
        return _FakeTensor(self.a.reshape(*shape))

    def __getitem__(self, i: int) -> _FakeTensor:
        return _FakeTensor(self.a[i])

    def float(self) -> _FakeTensor:
        return _FakeTensor(self.a.astype(np.float32, copy=True))

    def cpu(self) -> _FakeTensor:
        return self

    def numpy(self) -> npt.NDArray[Any]:
        return self.a

    def copy_(self, other: _FakeTensor) -> None:
        self.a[...] = other.a


def test_logits_processor_sees_generated_tokens_and_writes_back_in_place() -> None:
    seen: list[tuple[str, list[int], str]] = []

    def ban_token_2(rid: str, row: npt.NDArray[np.float32], generated: Sequence[int]) -> None:
        seen.append((rid, list(generated), str(row.dtype)))
        row[2] = -np.inf

    logits = np.zeros((1, 1, 5), dtype=np.float16)  # [beam, 1, vocab], a non-float32 engine dtype
    adapter = LogitsAdapter(ban_token_2, "req-1", n_prompt=3)
    adapter(17, _FakeTensor(logits), [[100, 101, 102, 7, 8]], None, None)
    assert seen == [("req-1", [7, 8], "float32")]  # the prompt is cut off
    assert logits[0, 0, 2] == -np.inf and logits[0, 0, 1] == 0
    assert len(__import__("inspect").signature(adapter).parameters) == 5  # TRT-LLM checks 4..5


# ---- stats -------------------------------------------------------------------------------------


def test_iteration_stats_parse_to_engine_stats() -> None:
    stat = {
        "numActiveRequests": 3,
        "numQueuedRequests": 2,
        "kvCacheStats": {"usedNumBlocks": 10, "maxNumBlocks": 100, "tokensPerBlock": 32},
    }
    s = parse_iteration_stats(stat)
    assert s is not None and (s.running, s.waiting, s.kv_used_tokens, s.kv_capacity_tokens) == (
        3,
        2,
        320,
        3200,
    )
    assert parse_iteration_stats('{"numActiveRequests": 1}') is not None  # older versions: JSON text
    assert parse_iteration_stats({"iter": 1}) is None


# ---- the engine over a fake tensorrt_llm module -------------------------------------------------


@dataclass
class _Out:
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    logprobs: list[Any] = field(default_factory=list)


class _Result:
    def __init__(self, script: list[_Out]) -> None:
        self.script, self.finished, self.aborted = script, False, False

    def __aiter__(self) -> _Result:
        return self

    async def __anext__(self) -> _Result:
        if self.finished or not self.script:
            raise StopAsyncIteration
        out = self.script.pop(0)
        if self.aborted:
            out = _Out(out.token_ids, out.text, "cancelled")
        self.outputs = [out]
        self.finished = out.finish_reason is not None
        return self

    def abort(self) -> None:
        self.aborted = True


class _Tokenizer:
    chat_template = None

    def __len__(self) -> int:
        return 1000

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def _fake_trt(script: list[_Out], calls: list[dict[str, Any]]) -> types.ModuleType:
    """A fake `tensorrt_llm` at the TensorRT-LLM seam (no GPU here)."""
    trt = types.ModuleType("tensorrt_llm")
    llmapi = types.ModuleType("tensorrt_llm.llmapi")

    class LLM:
        def __init__(self, model: str, **kw: Any) -> None:
            calls.append({"init": model, **kw})
            self.tokenizer = _Tokenizer()

        def generate_async(
            self,
            inputs: list[int],
            sampling_params: Any,
            streaming: bool = False,
            cache_salt: str | None = None,
        ) -> _Result:
            calls.append(
                {"inputs": inputs, "sp": sampling_params, "streaming": streaming, "salt": cache_salt}
            )
            self.result = _Result(list(script))
            return self.result

        def shutdown(self) -> None:
            calls.append({"shutdown": True})

    trt.LLM = LLM  # type: ignore[attr-defined]
    trt.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    llmapi.KvCacheConfig = lambda **kw: ("KvCacheConfig", kw)  # type: ignore[attr-defined]
    llmapi.GuidedDecodingParams = lambda **kw: ("GuidedDecodingParams", kw)  # type: ignore[attr-defined]
    trt.llmapi = llmapi  # type: ignore[attr-defined]
    return trt


async def _engine(monkeypatch: pytest.MonkeyPatch, script: list[_Out]) -> tuple[TrtLlmEngine, list[Any]]:
    calls: list[dict[str, Any]] = []
    trt = _fake_trt(script, calls)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", trt)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", trt.llmapi)
    engine = TrtLlmEngine(_cfg(context_length=256, engine_args={"kv_cache_free_gpu_memory_fraction": 0.8}))
    await engine.start()
    return engine, calls


async def _collect(it: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    return [e async for e in it]


async def test_engine_streams_passes_salt_and_ignores_kv_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [_Out([5], "Hi"), _Out([5, 6], "Hi there", "stop")]
    engine, calls = await _engine(monkeypatch, script)
    assert calls[0]["kv_cache_config"] == (
        "KvCacheConfig",
        {"enable_block_reuse": True, "free_gpu_memory_fraction": 0.8},
    )
    assert (
        engine.info.engine == "trtllm"
        and engine.info.context_length == 256
        and engine.info.vocab_size == 1000
    )
    snap = KVSnapshot(token_ids=(1, 2), data=b"kv", fingerprint="other")
    req = EngineRequest(
        "r1", [1, 2, 3], SamplingParams(seed=1), cache_salt="tenant-a", restore_kv=snap, export_kv=True
    )
    events = await _collect(engine.generate(req))
    assert _texts(events) == "Hi there" and events[-1].finish_reason == "stop"
    assert (events[-1].cached_prompt_tokens, events[-1].kv) == (0, None)  # honest: recomputed, no export
    assert engine.kv_restores_ignored == 1
    assert (
        calls[1]["salt"] == "tenant-a" and calls[1]["streaming"] is True and calls[1]["inputs"] == [1, 2, 3]
    )
    assert engine.stats().running == 0
    await engine.shutdown()
    assert calls[-1] == {"shutdown": True}


async def test_engine_aborts_trt_request_when_a_stop_string_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [_Out([5], "a S"), _Out([5, 6], "a STOP b"), _Out([5, 6, 7], "a STOP b c", "length")]
    engine, _ = await _engine(monkeypatch, script)
    req = EngineRequest("r2", [1], SamplingParams(stop=("STOP",), max_tokens=3))
    events = await _collect(engine.generate(req))
    assert _texts(events) == "a " and events[-1].finish_reason == "stop"
    assert engine._llm.result.aborted


async def test_engine_cancel_aborts_and_reports_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [_Out([5], "a"), _Out([5, 6], "ab"), _Out([5, 6, 7], "abc", "length")]
    engine, _ = await _engine(monkeypatch, script)
    gen = engine.generate(EngineRequest("r3", [1], SamplingParams(max_tokens=3)))
    first = await gen.__anext__()
    assert first.text == "a"
    engine.cancel("r3")
    rest = await _collect(gen)
    assert rest[-1].finish_reason == "cancelled" and engine._llm.result.aborted


async def test_engine_refuses_prompts_that_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = await _engine(monkeypatch, [])
    with pytest.raises(EngineError, match="empty"):
        await _collect(engine.generate(EngineRequest("r4", [], SamplingParams())))
    with pytest.raises(EngineError, match="context holds 256"):
        await _collect(engine.generate(EngineRequest("r5", list(range(256)), SamplingParams())))


async def test_engine_passes_a_constraint_as_guided_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, calls = await _engine(monkeypatch, [_Out([5], "7", "stop")])
    assert calls[0]["guided_decoding_backend"] == "llguidance"
    req = EngineRequest("r5", [1], SamplingParams(), constraint=Constraint(kind="regex", value="[0-9]"))
    await _collect(engine.generate(req))
    assert calls[1]["sp"]["guided_decoding"] == ("GuidedDecodingParams", {"regex": "[0-9]"})
    with pytest.raises(ConstraintError, match="unknown name"):
        engine.check_constraint(Constraint(kind="lark", value="start: nowhere"))


class _NoController(StepController):
    """Never called: the adapter refuses controllers before submitting (a fake at the seam)."""

    top_k, budget_s = 1, 0.1

    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        raise AssertionError("unreachable")


async def test_engine_refuses_step_controllers(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = await _engine(monkeypatch, [])
    req = EngineRequest("r6", [1], SamplingParams(), step_controller=_NoController())
    with pytest.raises(EngineError, match="step controllers are not supported"):
        await _collect(engine.generate(req))
