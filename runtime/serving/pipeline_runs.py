"""Pipeline runs as records: each run's steps (phase, attempts, timings, output or error, tokens) and
the run's own phase, kept in a bounded registry per pod so that a run can be read while it runs and for
a while after (`GET /v1/pipelines/{name}/runs/{id}`) and cancelled (`DELETE`).

A record lives on the pod that ran it: never in the Pipeline resource (runs do not write it) nor shared
across pods. Retention: every running run, and per tenant the `KEEP_PER_TENANT` most recent finished
ones for at most `KEEP_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
# Skipped: never started (the run ended first); Cancelled: stopped mid-call; Omitted: not run by the
# pipeline's own logic (its `when` did not hold, or a step it depends on was omitted).
SKIPPED, CANCELLED, OMITTED = "Skipped", "Cancelled", "Omitted"
ENDED = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED, OMITTED})

KEEP_PER_TENANT = 32
KEEP_S = 3600.0


@dataclass
class StepRecord:
    """One step of one run: its phase, when it ran, what it produced or why it failed."""

    name: str
    phase: str = PENDING
    attempts: int = 0
    output: str | None = None
    error: str | None = None
    error_code: str | None = None
    # Seconds since the run started (time.perf_counter based).
    started_s: float | None = None
    finished_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class PipelineRun:
    """One run: its steps' records, its phase, the output step's text once it has one, and why it
    failed if it did."""

    id: str
    tenant: str
    pipeline: str
    phase: str = PENDING
    output: str | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    created_at: int = field(default_factory=lambda: int(time.time()))
    duration_s: float = 0.0
    error: str | None = None
    error_code: str | None = None
    # The task running it (set by whoever starts it); cancelling it cancels every running step.
    task: asyncio.Task[PipelineRun] | None = field(default=None, repr=False, compare=False)
    ended_at: float | None = None  # time.monotonic()

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps.values())

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps.values())


class PipelineRuns:
    """This pod's run records, by id (one registry per runtime, used on the event loop)."""

    def __init__(self, keep_per_tenant: int = KEEP_PER_TENANT, keep_s: float = KEEP_S) -> None:
        self._keep_per_tenant = keep_per_tenant
        self._keep_s = keep_s
        self._runs: OrderedDict[str, PipelineRun] = OrderedDict()

    def add(self, run: PipelineRun) -> None:
        self._prune()
        self._runs[run.id] = run

    def tasks(self) -> list[asyncio.Task[PipelineRun]]:
        """The tasks of the runs in progress."""
        return [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]

    def running(self, tenant: str) -> int:
        """The tenant's runs not ended yet."""
        return sum(1 for r in self._runs.values() if r.tenant == tenant and r.ended_at is None)

    def get(self, run_id: str) -> PipelineRun | None:
        self._prune()
        return self._runs.get(run_id)

    def start(self, run: PipelineRun, task: asyncio.Task[PipelineRun]) -> None:
        """Attach the task running `run`. A task cancelled before its first step (a DELETE or a
        disconnect at once) never runs the code that ends the record: its end does it here."""
        run.task = task
        task.add_done_callback(lambda _: self._settle(run))

    def _settle(self, run: PipelineRun) -> None:
        if run.ended_at is not None:
            return
        run.phase = CANCELLED
        for step in run.steps.values():
            if step.phase in (PENDING, RUNNING):
                step.phase = SKIPPED
        self.ended(run)

    def ended(self, run: PipelineRun) -> None:
        """Mark `run` ended now (its retention starts) and let the oldest go."""
        run.ended_at = time.monotonic()
        self._prune()

    def _prune(self) -> None:
        now = time.monotonic()
        kept: dict[str, int] = {}
        # Newest first: a tenant's most recent finished runs are the ones kept.
        for run_id, run in reversed(list(self._runs.items())):
            if run.ended_at is None:
                continue
            kept[run.tenant] = kept.get(run.tenant, 0) + 1
            if kept[run.tenant] > self._keep_per_tenant or now - run.ended_at > self._keep_s:
                del self._runs[run_id]

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[PipelineRun]:
        return iter(list(self._runs.values()))
