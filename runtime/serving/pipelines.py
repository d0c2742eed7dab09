"""Run a tenant's Pipeline (RuntimeConfig.pipelines) as a DAG: every step whose dependencies have
finished starts at once (one asyncio task each), and each step's templates are rendered over the run's
input and the outputs of the steps it depends on.

What one attempt of a step calls, by kind, is serving/pipeline_steps.py's: the same paths as the ABI's
generate, an HTTP invocation, an MCP call and a vector search, so the tenant's model access, admission,
quotas and egress rules apply, and a model another pod serves is called there (serving/remote.py).
Nothing here knows HTTP; refusals are serving's domain errors.

Templates are substituted in one pass: a placeholder is replaced by its value and the value is never
scanned again, so an input or a model's output that spells `{{...}}` stays literal text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping

from realm.runtime.spec.pipeline import PLACEHOLDER, STEP_OUTPUT, PipelineStep
from realm.runtime.spec.runtime_config import PipelineEntry

from .errors import (
    Busy,
    DeadlineExceeded,
    EngineFailed,
    InvalidRequest,
    NotReady,
    PipelineNotFound,
    QuotaExceeded,
    ServingError,
    Unavailable,
)
from .invocations import REMOTE_DEADLINE_S
from .pipeline_runs import (
    CANCELLED,
    ENDED,
    FAILED,
    OMITTED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    PipelineRun,
    StepRecord,
)
from .pipeline_steps import StepCall, run_attempt
from .requests import configured_tenant
from .state import ServingState

# The run's input, as JSON text, that a run accepts: a template copies it into prompts, and every
# prompt is tokenized under the process's text cap anyway; this refuses the absurd before any step.
MAX_INPUT_BYTES = 256 * 1024
# Failures another attempt may get past (load, a lost pod, a deadline); the rest are the request's own.
RETRYABLE: tuple[type[ServingError], ...] = (
    Busy,
    DeadlineExceeded,
    EngineFailed,
    NotReady,
    QuotaExceeded,
    Unavailable,
)


def input_text(data: Mapping[str, object]) -> str:
    """What `{{input}}` reads: the input's `text` when that is a string, else the input as JSON."""
    text = data.get("text")
    if isinstance(text, str):
        return text
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def render(template: str, input_value: str, outputs: Mapping[str, str]) -> str:
    """`template` with `{{input}}` and `{{steps.<name>.output}}` replaced, in one pass (the spec's
    validation has already refused any other placeholder and any step not depended on)."""

    def value(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr == "input":
            return input_value
        ref = STEP_OUTPUT.match(expr)
        if ref is None or ref.group(1) not in outputs:  # unreachable for a validated entry
            raise InvalidRequest(
                f"the template reads {expr!r}, which is not available", code="invalid_template"
            )
        return outputs[ref.group(1)]

    return PLACEHOLDER.sub(value, template)


def pipeline_of(state: ServingState, tenant: str, name: str) -> PipelineEntry:
    """The pipeline `name` of `tenant`; another tenant's reads as missing (no existence leak)."""
    entry = state.pipelines.get(name)
    if entry is None or entry.tenant != tenant:
        raise PipelineNotFound(f"The pipeline '{name}' does not exist.", code="pipeline_not_found")
    return entry


def _checked_input(data: Mapping[str, object]) -> str:
    try:
        encoded = json.dumps(data, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"the input is not JSON: {e}", code="invalid_input", param="input") from e
    if len(encoded.encode()) > MAX_INPUT_BYTES:
        raise InvalidRequest(
            f"the input is {len(encoded.encode())} bytes as JSON; at most {MAX_INPUT_BYTES}",
            code="input_too_large",
            param="input",
        )
    return input_text(data)


def new_run(
    state: ServingState, tenant: str, name: str, input: Mapping[str, object]
) -> tuple[PipelineRun, str]:
    """A run of the tenant's pipeline `name`, registered (readable by id from now) but not started,
    and the text `{{input}}` reads. Raises PipelineNotFound, InvalidRequest (the input) and
    QuotaExceeded (the tenant's maxConcurrentPipelineRuns runs are in progress here)."""
    entry = pipeline_of(state, tenant, name)
    text_in = _checked_input(input)
    limit = configured_tenant(state, tenant).spec.quotas.max_concurrent_pipeline_runs
    if state.pipeline_runs.running(tenant) >= limit:
        raise QuotaExceeded(
            f"Tenant '{tenant}' has {limit} pipeline runs in progress on this pod, its "
            "quotas.maxConcurrentPipelineRuns; retry when one ends.",
            code="too_many_pipeline_runs",
            retry_after=1.0,
        )
    run = PipelineRun(
        id=f"run-{uuid.uuid4().hex}",
        tenant=tenant,
        pipeline=name,
        steps={s.name: StepRecord(s.name) for s in entry.steps},
    )
    state.pipeline_runs.add(run)
    return run, text_in


def run_of(state: ServingState, tenant: str, name: str, run_id: str) -> PipelineRun:
    """The tenant's run `run_id` of pipeline `name`, while this pod keeps it; any other reads as missing."""
    run = state.pipeline_runs.get(run_id)
    if run is None or run.tenant != tenant or run.pipeline != name:
        raise PipelineNotFound(f"No run '{run_id}' of the pipeline '{name}'.", code="run_not_found")
    return run


async def run_pipeline(
    state: ServingState,
    tenant: str,
    name: str,
    input: Mapping[str, object],
    *,
    route_key: str | None = None,
    on_output_text: Callable[[str], None] | None = None,
) -> PipelineRun:
    """Run the tenant's pipeline `name` to its end (`new_run`, then `execute`)."""
    run, text_in = new_run(state, tenant, name, input)
    return await execute(state, run, text_in, route_key=route_key, on_output_text=on_output_text)


async def cancel(run: PipelineRun) -> None:
    """Cancel `run` (every running step) and wait until it has ended; a run that ended stays as it is."""
    if run.task is not None and not run.task.done():
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)


def failed_step(run: PipelineRun) -> str | None:
    """The first step of `run` that failed (in declaration order), if one did."""
    return next((r.name for r in run.steps.values() if r.phase == FAILED), None)


def _tolerated(entry: PipelineEntry, failed: str) -> bool:
    """Whether the run goes on without step `failed`: some steps depend on it, all of them softly."""
    dependents = [s for s in entry.steps if failed in s.depends_on or failed in s.soft_depends_on]
    return bool(dependents) and all(failed in s.soft_depends_on for s in dependents)


async def execute(
    state: ServingState,
    run: PipelineRun,
    text_in: str,
    *,
    route_key: str | None = None,
    on_output_text: Callable[[str], None] | None = None,
    from_module: bool = False,
) -> PipelineRun:
    """Run `run` (from `new_run`) to its end (`from_module`: a module started it, see StepCall).
    `on_output_text` receives the output step's text as it is generated (the streaming variant). A step
    starts once its dependsOn have succeeded and its softDependsOn have ended; each attempt is bounded by
    its timeoutSeconds and a failure another attempt may get past is retried per its `retry`. A failed
    step the run cannot go on without (see `_tolerated`) cancels the steps still running and the run
    raises its error (QuotaExceeded, ModelNotAllowed, DeadlineExceeded, ...); past the pipeline's
    timeoutSeconds, DeadlineExceeded. Cancelling the caller cancels every running step."""
    try:
        entry = pipeline_of(state, run.tenant, run.pipeline)
    except ServingError as e:  # a reload removed it since `new_run`
        run.phase, run.error, run.error_code = FAILED, e.message, e.code or e.reason
        state.pipeline_runs.ended(run)
        raise
    steps = {s.name: s for s in entry.steps}
    records = run.steps
    outputs: dict[str, str] = {}
    t0 = time.perf_counter()
    run.phase = RUNNING

    run_deadline = None if entry.timeout_seconds is None else time.monotonic() + entry.timeout_seconds

    async def attempt(step: PipelineStep) -> None:
        record = records[step.name]
        deadlines = [d for d in (run_deadline,) if d is not None]
        if step.timeout_seconds is not None:
            deadlines.append(time.monotonic() + step.timeout_seconds)
        call = StepCall(
            state=state,
            tenant=run.tenant,
            route_key=route_key,
            render=lambda template: render(template, text_in, outputs),
            on_text=on_output_text if step.name == entry.output else None,
            remaining=(lambda: min(deadlines) - time.monotonic()) if deadlines else lambda: REMOTE_DEADLINE_S,
            from_module=from_module,
        )
        try:
            async with asyncio.timeout(step.timeout_seconds):
                done = await run_attempt(step, call)
        except TimeoutError as e:
            raise DeadlineExceeded(
                f"step {step.name} passed its timeoutSeconds ({step.timeout_seconds:g} s)",
                code="step_timeout",
            ) from e
        record.output = done.text
        record.prompt_tokens += done.prompt_tokens
        record.completion_tokens += done.completion_tokens

    async def run_step(step: PipelineStep) -> None:
        record = records[step.name]
        record.phase, record.started_s = RUNNING, time.perf_counter() - t0
        attempts = step.retry.attempts if step.retry is not None else 1
        try:
            while True:
                record.attempts += 1
                try:
                    await attempt(step)
                    break
                except ServingError as e:
                    record.error, record.error_code = e.message, e.code or e.reason
                    if record.attempts >= attempts or not isinstance(e, RETRYABLE):
                        record.phase = FAILED
                        raise
                assert step.retry is not None  # more than one attempt
                await asyncio.sleep(step.retry.backoff_seconds * 2 ** (record.attempts - 1))
        finally:
            record.finished_s = time.perf_counter() - t0
        record.phase, record.error, record.error_code = SUCCEEDED, None, None
        outputs[step.name] = record.output or ""

    def ready(n: str) -> bool:
        s = steps[n]
        return all(records[d].phase == SUCCEEDED for d in s.depends_on) and all(
            records[d].phase in ENDED for d in s.soft_depends_on
        )

    def omitted(n: str) -> bool:
        """Whether the pipeline's own logic leaves out step n: a dependency of it was omitted, or (once
        it is ready) its `when` does not hold."""
        s = steps[n]
        if any(records[d].phase == OMITTED for d in s.depends_on):
            return True
        return ready(n) and s.when is not None and not s.when.holds(outputs.get(s.when.step, ""))

    running: dict[asyncio.Task[None], str] = {}
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(entry.timeout_seconds):
            while failure is None:
                for n in entry.order:  # dependencies first: an omission reaches its dependents at once
                    if records[n].phase == PENDING and omitted(n):
                        records[n].phase = OMITTED
                        outputs.pop(n, None)
                for n in entry.order:
                    if records[n].phase == PENDING and ready(n):
                        for d in steps[n].soft_depends_on:
                            outputs.setdefault(d, "")  # a soft dependency that failed reads as empty
                        records[n].phase = RUNNING
                        task = asyncio.create_task(
                            run_step(steps[n]), name=f"pipeline {run.pipeline} step {n}"
                        )
                        running[task] = n
                if not running:
                    break
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    n = running.pop(task)
                    error = task.exception()
                    if error is not None and not _tolerated(entry, n) and failure is None:
                        failure = error
    except TimeoutError:
        failure = DeadlineExceeded(
            f"the pipeline passed its timeoutSeconds ({entry.timeout_seconds:g} s)", code="pipeline_timeout"
        )
    finally:
        # A failed step, the run's deadline, or the caller cancelled (a disconnect, a DELETE): no step
        # outlives the run.
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for r in records.values():
            if r.phase in (PENDING, RUNNING):
                r.phase = SKIPPED if r.started_s is None else CANCELLED
            if r.started_s is not None and r.finished_s is not None:
                state.metrics.pipeline_steps.labels(run.tenant, run.pipeline, r.name, r.phase).observe(
                    r.finished_s - r.started_s
                )
        # A run that ends with no failure and no output was cancelled by its caller.
        done = entry.output in outputs or records[entry.output].phase == OMITTED
        run.phase = FAILED if failure is not None else SUCCEEDED if done else CANCELLED
        # An omitted output step (a switch whose branches all stayed off) is an empty output.
        run.output = outputs.get(entry.output, "") if run.phase == SUCCEEDED else None
        if isinstance(failure, ServingError):
            run.error, run.error_code = failure.message, failure.code or failure.reason
        run.duration_s = time.perf_counter() - t0
        state.pipeline_runs.ended(run)
        state.metrics.pipeline_runs.labels(run.tenant, run.pipeline, run.phase).inc()
    if failure is not None:
        # The step's own refusal (QuotaExceeded, ModelNotAllowed, EngineFailed, ...); its record says
        # which step it was.
        raise failure
    return run
