"""Run a tenant's Pipeline (RuntimeConfig.pipelines) as a DAG: every step whose dependencies have
finished starts at once (one asyncio task each), and each step's prompt is its template rendered over
the run's input and the outputs of the steps it depends on.

A generate step goes through the same path as the ABI's generate (RuntimeHostServices.generate_text):
the tenant's model access, admission and quotas, and the pod serving the model when it is not loaded
here (serving/remote.py). Nothing here knows HTTP; refusals are serving's domain errors.

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
from dataclasses import dataclass, field

from realm.runtime.sandbox.abi import GenerateParams
from realm.runtime.spec.pipeline import PLACEHOLDER, STEP_OUTPUT, PipelineStep
from realm.runtime.spec.runtime_config import PipelineEntry

from .errors import InvalidRequest, PipelineNotFound, ServingError
from .invocations import RuntimeHostServices
from .state import ServingState

# The run's input, as JSON text, that a run accepts: a template copies it into prompts, and every
# prompt is tokenized under the process's text cap anyway; this refuses the absurd before any step.
MAX_INPUT_BYTES = 256 * 1024

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
# Skipped: never started (a dependency failed, or the run ended first); Cancelled: stopped mid-call.
SKIPPED, CANCELLED = "Skipped", "Cancelled"


@dataclass
class StepRecord:
    """One step of one run: its phase, when it ran, what it produced or why it failed."""

    name: str
    phase: str = PENDING
    output: str | None = None
    error: str | None = None
    error_code: str | None = None
    # Seconds since the run started (time.perf_counter based).
    started_s: float | None = None
    finished_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class PipelineRunResult:
    """A finished run: the output step's text, every step's record, the run's usage and wall time."""

    id: str
    pipeline: str
    phase: str
    output: str | None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps.values())

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps.values())


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


async def run_pipeline(
    state: ServingState,
    tenant: str,
    name: str,
    input: Mapping[str, object],
    *,
    route_key: str | None = None,
    on_output_text: Callable[[str], None] | None = None,
) -> PipelineRunResult:
    """Run the tenant's pipeline `name` to its end. `on_output_text` receives the output step's text
    as it is generated (the streaming variant). The first failing step cancels the steps still running
    and the run raises that step's error (QuotaExceeded, ModelNotAllowed, EngineFailed, ...);
    cancelling the caller cancels every running step."""
    entry = pipeline_of(state, tenant, name)
    text_in = _checked_input(input)
    services = RuntimeHostServices(state, route_key=route_key)
    steps = {s.name: s for s in entry.steps}
    records = {s.name: StepRecord(s.name) for s in entry.steps}
    outputs: dict[str, str] = {}
    t0 = time.perf_counter()
    run_id = f"run-{uuid.uuid4().hex}"

    async def run_step(step: PipelineStep) -> None:
        record = records[step.name]
        record.phase, record.started_s = RUNNING, time.perf_counter() - t0
        prompt = render(step.prompt_template, text_in, outputs)
        sink = on_output_text if step.name == entry.output else None
        try:
            done = await services.generate_text(
                tenant, GenerateParams(model=step.model, prompt=prompt, max_tokens=step.max_tokens), sink
            )
        except ServingError as e:
            record.phase, record.error, record.error_code = FAILED, e.message, e.code or e.reason
            raise
        finally:
            record.finished_s = time.perf_counter() - t0
        record.output, record.phase = done.text, SUCCEEDED
        record.prompt_tokens, record.completion_tokens = done.prompt_tokens, done.completion_tokens
        outputs[step.name] = done.text

    running: set[asyncio.Task[None]] = set()
    failure: BaseException | None = None
    try:
        while failure is None:
            for n in entry.order:
                if records[n].phase == PENDING and all(d in outputs for d in steps[n].depends_on):
                    records[n].phase = RUNNING
                    running.add(asyncio.create_task(run_step(steps[n]), name=f"pipeline {name} step {n}"))
            if not running:
                break
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            failure = next((t.exception() for t in finished if t.exception() is not None), None)
    finally:
        # A failed step, or the caller cancelled (a disconnect, a DELETE): no step outlives the run.
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for r in records.values():
            if r.phase in (PENDING, RUNNING):
                r.phase = SKIPPED if r.started_s is None else CANCELLED
            if r.started_s is not None and r.finished_s is not None:
                state.metrics.pipeline_steps.labels(tenant, name, r.name, r.phase).observe(
                    r.finished_s - r.started_s
                )
        # A run that ends with no failure and no output was cancelled by its caller.
        phase = FAILED if failure is not None else SUCCEEDED if entry.output in outputs else CANCELLED
        state.metrics.pipeline_runs.labels(tenant, name, phase).inc()
    if failure is not None:
        # The step's own refusal (QuotaExceeded, ModelNotAllowed, EngineFailed, ...); its record says
        # which step it was.
        raise failure
    return PipelineRunResult(
        id=run_id,
        pipeline=name,
        phase=SUCCEEDED,
        output=outputs.get(entry.output),
        steps=records,
        duration_s=time.perf_counter() - t0,
    )
