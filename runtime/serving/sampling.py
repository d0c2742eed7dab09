"""Tenant samplers (ABI 1.2) at the engine's seam: a `StepController` per tenant module, model and
top-k over the module's sampler instance (runtime/sandbox/sampler.py).

The engine hands a controller, once per step, the views of all its sequences sampled in that step;
`TenantSampler.submit` turns them into one `SamplerStepInput`, queues it to the instance's thread
and answers the engine from there. Generation ids are per tenant and never reused. An instance
lives while the module has sampled generations, and a short while after (`IDLE_S`), so that a
module generating one text after another keeps one instance; a redeployed module gets a new one.

A module whose sampler fails step after step (overruns its budget, traps) is backed off: its new
sampled generations wait, the wait doubling with each failure in a row (`BACKOFF_FIRST_S` ..
`BACKOFF_MAX_S`, as a crash-looping container is restarted), and are refused when their caller
cannot wait that long. Each failed generation has cost the shared batch its prefill and a core its
budget, which a module that always fails would otherwise spend for ever; a refusal alone would not
bound that, since the module (or its client) can ask again at once, a wait holds the asker.
One success ends the streak; a redeployed module starts without one.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from realm.runtime.engines.base import StepController, StepDecision, StepDone, StepFailure, StepView
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox.abi import (
    CandidatePayload,
    DecisionPayload,
    SamplerStepInput,
    SequenceStepPayload,
)
from realm.runtime.sandbox.runner import Sandbox, SandboxLimits, TenantModule
from realm.runtime.sandbox.sampler import SamplerContext, SamplerFailed, SamplerInstance

from .errors import ServingError
from .state import ServingState

# How long an instance without sampled generations is kept for the next one.
IDLE_S = 30.0
# The refusal after the second failure in a row, doubled per further failure, up to the last.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# A candidate's logprob as JSON must be a number: -inf (a token the constraint bans) becomes f32's lowest.
LOWEST_LOGPROB = -3.4e38


class SamplerTimeout(ServingError):
    reason = "sampler_timeout"


class SamplerTrap(ServingError):
    reason = "sampler_trap"


class SamplerInvalid(ServingError):
    reason = "sampler_invalid"


SAMPLER_ERRORS: dict[str, type[ServingError]] = {
    "sampler_timeout": SamplerTimeout,
    "sampler_trap": SamplerTrap,
    "sampler_invalid": SamplerInvalid,
}


def sampler_error(code: str, message: str) -> ServingError:
    """The serving error of a sequence its sampler failed (`TokenEvent.error_code`)."""
    return SAMPLER_ERRORS.get(code, SamplerTrap)(message, code=code)


def decision(d: DecisionPayload) -> StepDecision:
    """An ABI decision as the engine's."""
    if d.kind == "token":
        return StepDecision("token", (d.token,))
    if d.kind in ("allow", "force"):
        return StepDecision(d.kind, tuple(d.tokens))
    if d.kind == "bias":
        return StepDecision("bias", bias=tuple((b.token, b.bias) for b in d.bias))
    return StepDecision(d.kind)


STOP = StepDecision("stop")


def _logprob(x: float) -> float:
    return x if math.isfinite(x) else LOWEST_LOGPROB


@dataclass
class _Backoff:
    streak: int = 0
    until: float = 0.0
    code: str = "sampler_timeout"
    message: str = ""

    def failed(self, failure: SamplerFailed, now: float) -> None:
        self.streak += 1
        self.code, self.message = failure.code, failure.message
        if self.streak >= 2:
            self.until = now + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.streak - 2))


@dataclass
class _Generation:
    id: int
    config: str


class TenantSampler(StepController):
    """The StepController of one module's sampled generations on one model with one top-k."""

    def __init__(
        self,
        instance: SamplerInstance,
        *,
        tenant: str,
        model: str,
        top_k: int,
        metrics: Metrics,
        on_release: Callable[[str], None],
        on_outcome: Callable[[SamplerFailed | None], None] = lambda _: None,
    ) -> None:
        self.instance = instance
        self.tenant = tenant
        self.model = model
        self.top_k = top_k
        self.budget_s = instance.limits.sampler_step_ms / 1000
        self._metrics = metrics
        self._on_release = on_release
        self._on_outcome = on_outcome
        self._generations: dict[str, _Generation] = {}
        self._lock = threading.Lock()

    def register(self, request_id: str, generation_id: int, config: str) -> None:
        with self._lock:
            self._generations[request_id] = _Generation(generation_id, config)

    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        with self._lock:
            known = [self._generations.get(v.request_id) for v in views]
        asked = [(v, g) for v, g in zip(views, known, strict=True) if g is not None]
        steps = SamplerStepInput(
            steps=[
                SequenceStepPayload(
                    id=g.id,
                    config=g.config,
                    step=v.step,
                    candidates=[
                        CandidatePayload(token=c.token_id, logprob=_logprob(c.logprob), text=c.text)
                        for c in v.candidates
                    ],
                    tokens=list(v.tokens),
                )
                for v, g in asked
            ]
        )
        started = time.perf_counter()

        def finished(outcome: list[DecisionPayload] | SamplerFailed) -> None:
            self._metrics.sampler_step.labels(self.model).observe(time.perf_counter() - started)
            if isinstance(outcome, SamplerFailed):
                self._metrics.sampler_failures.labels(self.tenant, outcome.code).inc()
                # A wrong answer costs nobody a budget: only overruns and traps make a streak.
                if outcome.code != "sampler_invalid":
                    self._on_outcome(outcome)
                done(StepFailure(outcome.code, outcome.message))
                return
            self._on_outcome(None)
            # A sequence released meanwhile (its caller left) is ended, not asked about.
            answers = iter(outcome)
            done([decision(next(answers)) if g is not None else STOP for g in known])

        if not asked:
            done([STOP for _ in views])
            return
        self.instance.submit(steps, finished)

    def release(self, request_id: str) -> None:
        with self._lock:
            gone = self._generations.pop(request_id, None)
        if gone is not None:
            self._on_release(request_id)


@dataclass
class _Instance:
    instance: SamplerInstance
    generations: int = 0
    idle_since: float | None = None
    controllers: dict[tuple[str, int], TenantSampler] = field(default_factory=dict)


class Samplers:
    """Every tenant's sampler instances and controllers (one registry per runtime, on the event loop
    except `TenantSampler.release`, which the engine calls from its own thread)."""

    def __init__(self) -> None:
        self._instances: dict[tuple[str, str], _Instance] = {}
        self._ids: dict[str, itertools.count[int]] = {}
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Timer | None = None

    def next_id(self, tenant: str) -> int:
        with self._lock:
            return next(self._ids.setdefault(tenant, itertools.count(1)))

    def controller(
        self,
        *,
        sandbox: Sandbox,
        module: TenantModule,
        limits: SandboxLimits,
        context: Callable[[], SamplerContext],
        model: str,
        top_k: int,
        metrics: Metrics,
    ) -> TenantSampler:
        """The controller for one more sampled generation of `module` (counted until its release).
        A ServingError of the last failure's code while the module's sampler is backed off."""
        key = (module.tenant, module.sha256)
        with self._lock:
            self._refuse_backed_off(key)
            self._close_idle(except_key=key)
            entry = self._instances.get(key)
            if entry is None:
                entry = _Instance(SamplerInstance(sandbox, module, limits, context()))
                self._instances[key] = entry
            ctl = entry.controllers.get((model, top_k))
            if ctl is None:
                ctl = TenantSampler(
                    entry.instance,
                    tenant=module.tenant,
                    model=model,
                    top_k=top_k,
                    metrics=metrics,
                    on_release=lambda _: self._released(key),
                    on_outcome=lambda failure: self._outcome(key, failure),
                )
                entry.controllers[(model, top_k)] = ctl
            entry.generations += 1
            entry.idle_since = None
            return ctl

    def backed_off_for(self, module: TenantModule) -> float:
        """Seconds until `module`'s sampled generations are let in again (0 when they are)."""
        with self._lock:
            b = self._backoff.get((module.tenant, module.sha256))
            return max(0.0, b.until - time.monotonic()) if b is not None else 0.0

    def _refuse_backed_off(self, key: tuple[str, str]) -> None:
        # Called with _lock held. Streaks of the tenant's earlier modules are forgotten.
        for old in [k for k in self._backoff if k[0] == key[0] and k != key]:
            del self._backoff[old]
        b = self._backoff.get(key)
        left = b.until - time.monotonic() if b is not None else 0.0
        if b is not None and left > 0:
            raise sampler_error(
                b.code,
                f"{b.message} (the module's sampler failed {b.streak} steps in a row: its sampled "
                f"generations are refused for {left:.1f} s more)",
            )

    def _outcome(self, key: tuple[str, str], failure: SamplerFailed | None) -> None:
        with self._lock:
            if failure is None:
                self._backoff.pop(key, None)
            else:
                self._backoff.setdefault(key, _Backoff()).failed(failure, time.monotonic())

    def abandon(self, ctl: TenantSampler) -> None:
        """A generation counted by `controller` that was never registered with it."""
        self._released((ctl.tenant, ctl.instance.module.sha256))

    def _released(self, key: tuple[str, str]) -> None:
        with self._lock:
            entry = self._instances.get(key)
            if entry is None:
                return
            entry.generations -= 1
            if entry.generations > 0:
                return
            entry.idle_since = time.monotonic()
            # Nothing else may come for it: look again once it has been idle long enough.
            self._arm(IDLE_S)

    def _arm(self, delay_s: float) -> None:
        # Called with _lock held. One timer for all idle instances, never one per generation.
        if self._sweeper is None:
            self._sweeper = threading.Timer(delay_s + 0.1, self._swept)
            self._sweeper.daemon = True
            self._sweeper.start()

    def _swept(self) -> None:
        with self._lock:
            self._sweeper = None
            self._close_idle()
            idle = [e.idle_since for e in self._instances.values() if e.idle_since is not None]
            if idle:
                self._arm(max(0.0, min(idle) + IDLE_S - time.monotonic()))

    def _close_idle(self, *, except_key: tuple[str, str] | None = None) -> None:
        # Called with _lock held. A redeployed module's instance goes as soon as it is idle; any
        # other once it has been idle IDLE_S.
        now = time.monotonic()
        for key, entry in list(self._instances.items()):
            if key == except_key or entry.idle_since is None:
                continue
            redeployed = except_key is not None and key[0] == except_key[0]
            if redeployed or now - entry.idle_since >= IDLE_S:
                del self._instances[key]
                entry.instance.close()

    def sweep(self) -> None:
        """Close the instances idle past IDLE_S."""
        with self._lock:
            self._close_idle()

    @property
    def instances(self) -> int:
        return len(self._instances)

    def close(self) -> None:
        with self._lock:
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            for entry in self._instances.values():
                entry.instance.close()
            self._instances.clear()


def tenant_samplers(state: ServingState) -> Samplers:
    if state.samplers is None:
        state.samplers = Samplers()
    return state.samplers
