"""A tenant module's own sampler (ABI 1.2): one instance in its own Store, on its own thread.

The host calls it once per engine step with every live sequence of the tenant that asked for it
(`SamplerInstance.step`): a core module's `realm_sampler_step(in_len)`, the step input being its
pending result and its answer a `realm_sampler_decide`; a component's `realm:tenant/sampler`
`step`. Every call gets the tenant's per-step fuel and time (epoch deadline); a trap or an overrun
fails that call and drops the Store, so the next call starts from a fresh instance. Inside a step
a module may only log, tokenize, detokenize and read model info (`SamplerContext`).

This module knows the ABI and `SandboxLimits`, nothing of engines or tenants' generations: the
serving layer (runtime/serving/sampling.py) turns engine steps into `SamplerStepInput` and the
decisions back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pydantic
import wasmtime
from wasmtime import component as wc

from . import context, core_binding
from .abi import (
    CORE_SAMPLER_EXPORT,
    WIT_PACKAGE,
    ConversationCreate,
    ConversationPayload,
    ConversationPut,
    DecisionPayload,
    ErrorCode,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    GenerationPayload,
    HostError,
    SamplerDecisions,
    SamplerStepInput,
)
from .context import Deadline, InvocationContext
from .modules import TenantModule
from .runner import EPOCH_TICK_S, Sandbox, SandboxLimits, guest_priority

log = logging.getLogger(__name__)

SamplerFailureCode = Literal["sampler_timeout", "sampler_trap", "sampler_invalid"]
SAMPLER_INTERFACE = "sampler"
SAMPLER_FUNCTION = "step"
NO_SAMPLER = "the module exports no sampler"
# Instantiating (and `_initialize`) is once per instance, not per step: it gets at least this much.
INSTANTIATE_MS = 1000
INSTANTIATE_FUEL = 1_000_000_000


class SamplerFailed(Exception):
    """A step the sampler could not answer: `code` is the ABI's (sampler_timeout, ...)."""

    def __init__(self, code: SamplerFailureCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: SamplerFailureCode = code
        self.message = message


def sampler_export(engine: wasmtime.Engine, module: TenantModule) -> str | None:
    """The name the module exports its sampler under, or None when it has none."""
    if module.kind == "core":
        assert isinstance(module.artifact, wasmtime.Module)
        names = {e.name for e in module.artifact.exports}
        return CORE_SAMPLER_EXPORT if CORE_SAMPLER_EXPORT in names else None
    assert isinstance(module.artifact, wc.Component)
    for name in module.artifact.type.exports(engine):
        if name.startswith(f"{WIT_PACKAGE}/{SAMPLER_INTERFACE}@"):
            return name
    return None


class SamplerContext(InvocationContext):
    """The host calls of one sampler instance. Only log, encode-tokens, decode-tokens and
    load-model-by-name (and get-model-version, the same call) serve; the rest are `unsupported`:
    a sampler decides, it neither generates nor writes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(input_data="", on_output=lambda _: None, **kwargs)
        self.expected: int | None = None  # steps of the call in progress
        self.decisions: SamplerDecisions | None = None
        self.refused: str | None = None  # why the last realm_sampler_decide failed

    def _unsupported(self, name: str) -> HostError:
        return HostError(ErrorCode.UNSUPPORTED, f"{name} cannot be called inside a sampler step")

    def begin_step(self, deadline: Deadline, expected: int) -> None:
        self.deadline = deadline
        self.expected = expected
        self.decisions = None
        self.refused = None

    def end_step(self) -> None:
        self.expected = None

    def sampler_decide(self, decisions: SamplerDecisions) -> None:
        self.host_calls["sampler_decide"] += 1
        error: HostError | None = None
        if self.expected is None:
            error = HostError(ErrorCode.UNSUPPORTED, "realm_sampler_decide is only for realm_sampler_step")
        elif self.decisions is not None:
            error = HostError(ErrorCode.INVALID_ARGUMENT, "this step is decided already")
        elif len(decisions.decisions) != self.expected:
            error = HostError(
                ErrorCode.INVALID_ARGUMENT,
                f"{len(decisions.decisions)} decisions for {self.expected} sequences",
            )
        if error is not None:
            self.refused = error.message
            raise error
        self.decisions = decisions

    def host_generate(self, params: GenerateParams, *, stream: bool) -> GenerationPayload:
        raise self._unsupported("generate")

    def generate_with(self, params: GenerateParams, options: GenerateOptions) -> GenerationDetail:
        raise self._unsupported("generate")

    def input(self) -> str:
        raise self._unsupported("input")

    def emit(self, chunk: str) -> None:
        raise self._unsupported("emit")

    def conversation_create(self, params: ConversationCreate) -> ConversationPayload:
        raise self._unsupported("conversations")

    def conversation_get(self, conversation_id: str) -> ConversationPayload:
        raise self._unsupported("conversations")

    def conversation_put(self, params: ConversationPut) -> ConversationPayload:
        raise self._unsupported("conversations")

    def conversation_delete(self, conversation_id: str) -> None:
        raise self._unsupported("conversations")


class SamplerInstance:
    """One module's sampler: a Store and instance made on first use, on a thread of its own (at
    the sandbox's guest priority), one step at a time. `submit` never blocks."""

    def __init__(
        self,
        sandbox: Sandbox,
        module: TenantModule,
        limits: SandboxLimits,
        ctx: SamplerContext,
    ) -> None:
        self.module = module
        self.limits = limits
        self._sandbox = sandbox
        self._ctx = ctx
        self._export = sampler_export(sandbox.engine, module)
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"realm-sampler-{module.tenant}",
            initializer=guest_priority,
            initargs=(sandbox.guest_nice,),
        )
        self._store: wasmtime.Store | None = None
        self._step: Callable[[int, SamplerStepInput], SamplerDecisions] | None = None
        self._closed = threading.Event()
        self.last_used = time.monotonic()
        self.instantiations = 0

    @property
    def exports_sampler(self) -> bool:
        return self._export is not None

    def submit(
        self, steps: SamplerStepInput, done: Callable[[list[DecisionPayload] | SamplerFailed], None]
    ) -> None:
        """Queue one call; `done` gets the decisions or the failure, on the instance's thread."""

        def run() -> None:
            try:
                outcome: list[DecisionPayload] | SamplerFailed = self.step(steps)
            except SamplerFailed as e:
                outcome = e
            except Exception as e:  # never lose a `done`: the engine waits for it
                log.exception("the sampler of tenant %s failed", self.module.tenant)
                outcome = SamplerFailed("sampler_trap", f"{type(e).__name__}: {e}")
            done(outcome)

        if self._closed.is_set():
            done(SamplerFailed("sampler_trap", "the sampler instance is closed"))
            return
        try:
            self._thread.submit(run)
        except RuntimeError:  # shut down meanwhile
            done(SamplerFailed("sampler_trap", "the sampler instance is closed"))

    def warm(self) -> concurrent.futures.Future[None]:
        """Instantiate now, on the instance's thread, unless it has an instance: the generation
        that asks for the sampler fails before it starts when the module cannot serve one, and
        its first step does not pay for the instantiation. The future raises SamplerFailed."""

        def ensure() -> None:
            if self._export is None:
                raise SamplerFailed("sampler_trap", NO_SAMPLER)
            if self._store is None or self._step is None:
                self._instantiate()

        if self._closed.is_set():
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(SamplerFailed("sampler_trap", "the sampler instance is closed"))
            return failed
        return self._thread.submit(ensure)

    def step(self, steps: SamplerStepInput) -> list[DecisionPayload]:
        """One call of the module's sampler, on the calling thread. Raises SamplerFailed."""
        self.last_used = time.monotonic()
        if self._export is None:
            raise SamplerFailed("sampler_trap", NO_SAMPLER)
        limits = self.limits
        store = self._store
        if store is None or self._step is None:
            store = self._instantiate()
        assert self._step is not None
        store.set_fuel(limits.sampler_step_fuel)
        store.set_epoch_deadline(math.ceil(limits.sampler_step_ms / 1000 / EPOCH_TICK_S) + 1)
        deadline = Deadline(limits.sampler_step_ms / 1000, self._sandbox.closing, lambda: store.set_fuel(0))
        self._ctx.begin_step(deadline, len(steps.steps))
        try:
            with context.deadline_bound(deadline), context.bound(self._ctx):
                decisions = self._step(len(steps.steps), steps)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            self._discard()
            raise _step_failure(deadline, e) from None
        except SamplerFailed as e:
            if e.code != "sampler_invalid":
                self._discard()
            raise
        finally:
            self._ctx.end_step()
        if deadline.stopped is not None:
            self._discard()
            raise SamplerFailed(
                "sampler_timeout", f"the sampler passed its step budget: {deadline.stopped[1]}"
            )
        return list(decisions.decisions)

    def _instantiate(self) -> wasmtime.Store:
        budget_ms = max(self.limits.sampler_step_ms, INSTANTIATE_MS)
        store = self._sandbox.sampler_store(self.module, self.limits, deadline_ms=budget_ms)
        deadline = Deadline(budget_ms / 1000, self._sandbox.closing, lambda: store.set_fuel(0))
        store.set_fuel(max(self.limits.sampler_step_fuel, INSTANTIATE_FUEL))
        store.set_epoch_deadline(math.ceil(budget_ms / 1000 / EPOCH_TICK_S) + 1)
        self._ctx.begin_step(deadline, 0)
        try:
            with context.deadline_bound(deadline), context.bound(self._ctx):
                if self.module.kind == "core":
                    step = self._instantiate_core(store)
                else:
                    step = self._instantiate_component(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise _step_failure(deadline, e) from None
        finally:
            self._ctx.end_step()
        self._store, self._step = store, step
        self.instantiations += 1
        return store

    def _instantiate_core(self, store: wasmtime.Store) -> Callable[[int, SamplerStepInput], SamplerDecisions]:
        pre = self._sandbox.instance_pre(self.module)
        with core_binding.invocation(self._ctx):
            instance = pre.instantiate(store)
            exports = instance.exports(store)
            init = exports.get("_initialize")
            if isinstance(init, wasmtime.Func):
                init(store)
        func = exports[CORE_SAMPLER_EXPORT]
        assert isinstance(func, wasmtime.Func)
        ctx = self._ctx

        def call(n: int, steps: SamplerStepInput) -> SamplerDecisions:
            data = steps.model_dump_json().encode()
            with core_binding.invocation(ctx):
                core_binding.set_pending(data)
                try:
                    rc = int(func(store, len(data)))
                except wasmtime.ExitTrap as e:
                    raise SamplerFailed("sampler_trap", f"the sampler exited with status {e.code}") from None
            if rc != 0:
                raise SamplerFailed("sampler_trap", f"{CORE_SAMPLER_EXPORT} returned {rc}")
            return _decided(ctx)

        return call

    def _instantiate_component(
        self, store: wasmtime.Store
    ) -> Callable[[int, SamplerStepInput], SamplerDecisions]:
        from . import component_binding

        assert isinstance(self.module.artifact, wc.Component) and self._export is not None
        instance = component_binding.build_linker(self._sandbox.engine).instantiate(
            store, self.module.artifact
        )
        iface = instance.get_export_index(store, self._export)
        index = instance.get_export_index(store, SAMPLER_FUNCTION, iface) if iface is not None else None
        func = instance.get_func(store, index) if index is not None else None
        if func is None:
            raise SamplerFailed("sampler_trap", NO_SAMPLER)

        def call(n: int, steps: SamplerStepInput) -> SamplerDecisions:
            raw = func(store, [component_binding.sequence_step_to_wit(s) for s in steps.steps])
            if len(raw) != n:
                raise SamplerFailed("sampler_invalid", f"{len(raw)} decisions for {n} sequences")
            with contextlib.suppress(wasmtime.WasmtimeError):  # the call may have run it already
                func.post_return(store)
            try:
                return SamplerDecisions(decisions=[component_binding.decision_from_wit(d) for d in raw])
            except (pydantic.ValidationError, ValueError, AttributeError) as e:
                raise SamplerFailed("sampler_invalid", f"the sampler's decisions are invalid: {e}") from None

        return call

    def _discard(self) -> None:
        # A trapped instance may be halfway through anything: never call it again.
        self._store, self._step = None, None

    def close(self) -> None:
        self._closed.set()
        self._thread.submit(self._discard)
        self._thread.shutdown(wait=False)


def _decided(ctx: SamplerContext) -> SamplerDecisions:
    if ctx.decisions is None:
        why = ctx.refused or f"{CORE_SAMPLER_EXPORT} returned without calling realm_sampler_decide"
        raise SamplerFailed("sampler_invalid", why)
    return ctx.decisions


def _step_failure(deadline: Deadline, e: wasmtime.Trap | wasmtime.WasmtimeError) -> SamplerFailed:
    text = str(e)
    code = e.trap_code if isinstance(e, wasmtime.Trap) else None
    if deadline.stopped is not None:
        return SamplerFailed("sampler_timeout", f"the sampler passed its step budget: {deadline.stopped[1]}")
    if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in text:
        return SamplerFailed("sampler_timeout", "the sampler used its fuel budget for the step")
    if code == wasmtime.TrapCode.INTERRUPT or "wasm trap: interrupt" in text:
        return SamplerFailed("sampler_timeout", "the sampler passed its time budget for the step")
    line = next((x.strip() for x in text.splitlines() if "wasm trap:" in x), text.strip().split("\n")[0])
    return SamplerFailed("sampler_trap", line[:500])
