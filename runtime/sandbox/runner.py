"""Runs tenants' WebAssembly: one Engine per process, one Store and instance per invocation.

Each invocation runs on a worker thread of the sandbox's pool (a wasmtime Store is used by one
thread at a time; ctypes releases the GIL while WebAssembly runs, so stores run in parallel).
Limits: linear memory and table sizes and instance counts through the Store's limiter, CPU
through fuel, wall-clock time through epoch interruption driven by a ticker thread; the time a
run spends waiting in host code (WASI sleeps, host calls, output back-pressure) is bounded by
the same deadline through `context.Deadline`, which also ends every run when the sandbox closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

from . import context, core_binding
from .abi import ABI_MAJOR, CORE_RUN_EXPORT, CORE_VERSION_EXPORT, WIT_PACKAGE
from .abi import InvocationErrorCode as Code
from .context import DEFAULT_MAX_OUTPUT_BYTES, Deadline, InvocationContext
from .modules import (
    Artifact,
    InvocationAbandoned,
    InvocationFailed,
    ModuleCache,
    TenantModule,
    check_core_interface,
    check_one_memory,
    count_component_memories,
    detect_kind,
    parse_abi_version,
)

__all__ = [
    "InvocationAbandoned",
    "InvocationFailed",
    "InvocationResult",
    "Sandbox",
    "SandboxLimits",
    "TenantModule",
]

log = logging.getLogger(__name__)

MIB = 1 << 20
EPOCH_TICK_S = 0.005
# Fuel is always on (the engine meters every store); without a quota the deadline is the bound.
UNLIMITED_FUEL = 1 << 62
# Every linear memory reserves this much address space up front instead of 4 GiB + guard, so
# tens of thousands of instances fit in one process; larger memories are moved as they grow.
MEMORY_RESERVATION = 64 * MIB
ENGINE_SETTINGS: dict[str, Any] = {
    "epoch_interruption": True,
    "consume_fuel": True,
    "cranelift_opt_level": "speed",
    "wasm_component_model": True,
    "memory_reservation": MEMORY_RESERVATION,
    "memory_reservation_for_growth": MEMORY_RESERVATION,
    "memory_guard_size": 64 << 10,
}
# Load-time check (realm_abi_version, and _initialize before it): bounded in fuel and time; the
# memory cap is the largest a quota allows, so deploy never rejects what some tenant could run.
LOAD_CHECK_FUEL = 1_000_000_000
LOAD_CHECK_DEADLINE_MS = 2_000
LOAD_CHECK_MEMORY_MIB = 4096
SHORT_MESSAGE = 500
# A component is many core instances (componentize-py: 9 and more: the interpreter, libc, WASI
# adapters, shims), so its count limits start higher; the tenant's count applies on top.
COMPONENT_MIN_INSTANCES = 64
# What one table element costs the store's memory budget (a reference is a pointer).
TABLE_ELEMENT_BYTES = 8
# How long close() waits for runs it has interrupted to hand their threads back.
CLOSE_GRACE_S = 5.0
# How long past its deadline a component's caller waits before it is answered without the run.
COMPONENT_ANSWER_SLACK_S = 2.0
# How much nicer than the process the worker threads that run guests are, by default (19 is the
# lowest priority; the runtime config's invocations.guestNice sets it).
GUEST_NICE = 10


@dataclass(frozen=True)
class SandboxLimits:
    """Per-invocation limits. `memory_mib` is the store's memory budget: for a core module (one
    linear memory) its memory and its tables together (each table reserving `table_elements`
    elements); for a component, the memories its core modules define, each an equal share.
    `instances` also caps the number of tables (for components, at least COMPONENT_MIN_INSTANCES).
    `deadline_ms` bounds the whole run, waits in host code included; `max_output_bytes` what it
    may emit. The sandbox's own record: whoever invokes builds it
    (runtime/serving/invocations.py, from a tenant's quotas)."""

    memory_mib: int = 64
    fuel: int | None = None
    deadline_ms: int = 30_000
    table_elements: int = 10_000
    instances: int = 8
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    # ABI 1.2: each call of the module's own sampler (sampler.py) gets this much time and fuel.
    sampler_step_ms: int = 20
    sampler_step_fuel: int = 100_000_000


@dataclass
class InvocationResult:
    output: str
    host_calls: dict[str, int]
    wall_s: float
    fuel_used: int | None
    # Size of the instance's memory after the run; memory never shrinks, so it is the peak.
    memory_peak_bytes: int


def make_engine() -> tuple[wasmtime.Engine, str]:
    """The process's engine and the digest of its settings (part of every cache key)."""
    cfg = wasmtime.Config()
    for name, value in ENGINE_SETTINGS.items():
        setattr(cfg, name, value)
    digest = hashlib.sha256(json.dumps(ENGINE_SETTINGS, sort_keys=True).encode()).hexdigest()
    return wasmtime.Engine(cfg), digest


class Sandbox:
    def __init__(
        self,
        cache_dir: Path,
        *,
        max_workers: int = 64,
        max_abandoned: int | None = None,
        guest_nice: int = GUEST_NICE,
    ) -> None:
        """`max_workers`: runs at once (the caller's admission keeps to it). `max_abandoned` (default
        `max_workers`): threads that may stay asleep past their callers' answers (components in WASI
        0.2's native poll) before new component runs are refused with `wasm_busy`; the pool has
        threads for both, so runs the caller admits always find one."""
        self._engine, digest = make_engine()
        self._cache = ModuleCache(self._engine, cache_dir, digest)
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        core_binding.shadow_wasi_time(self._linker)
        core_binding.define_realm(self._linker)
        self._pres: dict[str, wasmtime.InstancePre] = {}
        self._modules: dict[str, TenantModule] = {}
        self._lock = threading.Lock()
        self._max_abandoned = max_workers if max_abandoned is None else max_abandoned
        self._abandoned = 0
        # Abandoned runs stop at max_abandoned, plus those running when it was reached.
        self._pool = ThreadPoolExecutor(
            max_workers=2 * max_workers + self._max_abandoned,
            thread_name_prefix="realm-wasm",
            initializer=guest_priority,
            initargs=(guest_nice,),
        )
        self._guest_nice = guest_nice
        self._stop = threading.Event()
        # Set by close(): every wait of every run ends (context.Deadline), and no run starts.
        self._closing = threading.Event()
        self._running = 0
        self._idle = threading.Condition()
        self._max_ticks = 1
        self._ticker = threading.Thread(target=self._tick, name="realm-wasm-epoch", daemon=True)
        self._ticker.start()

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    @property
    def guest_nice(self) -> int:
        return self._guest_nice

    @property
    def closing(self) -> threading.Event:
        """Set once the sandbox closes: every wait of every run (and sampler step) ends."""
        return self._closing

    def sampler_store(
        self, module: TenantModule, limits: SandboxLimits, *, deadline_ms: int
    ) -> wasmtime.Store:
        """A Store for `module`'s sampler instance (sampler.py): the tenant's memory cap; the
        instance sets fuel and the epoch deadline before every call, none longer than `deadline_ms`."""
        memories = module.memories if module.kind == "component" else None
        step = SandboxLimits(
            memory_mib=limits.memory_mib,
            fuel=limits.sampler_step_fuel,
            deadline_ms=deadline_ms,
            table_elements=limits.table_elements,
            instances=limits.instances,
        )
        return self._store(step, component_memories=memories, wasi=module.needs_wasi)

    def instance_pre(self, module: TenantModule) -> wasmtime.InstancePre:
        """The core module's pre-linked instance, shared by its invocations and its sampler."""
        return self._instance_pre(module)

    @property
    def compiles(self) -> int:
        """Modules compiled (not loaded from the disk cache) by this sandbox."""
        return self._cache.compiles

    # ---- modules ----------------------------------------------------------------------------

    def load(self, tenant: str, wasm: bytes) -> TenantModule:
        kind = detect_kind(wasm)
        if kind == "core":
            check_one_memory(wasm)
        memories = 1 if kind == "core" else count_component_memories(wasm)
        sha = hashlib.sha256(wasm).hexdigest()
        artifact = self._cache.artifact(sha, kind, wasm)
        version = self._cache.known_abi(sha)
        if version is None:
            version = self._check_core(artifact) if kind == "core" else self._check_component(artifact)
            self._cache.remember_abi(sha, version)
        needs_wasi = kind == "component" or any(
            imp.module == "wasi_snapshot_preview1"
            for imp in artifact.imports  # type: ignore[union-attr]
        )
        return TenantModule(
            tenant=tenant,
            sha256=sha,
            kind=kind,
            abi_version=version,
            artifact=artifact,
            needs_wasi=needs_wasi,
            memories=memories,
        )

    def deploy(self, tenant: str, wasm: bytes) -> TenantModule:
        module = self.load(tenant, wasm)
        with self._lock:
            self._modules[tenant] = module
            self._prune_pres()
        return module

    def current(self, tenant: str) -> TenantModule | None:
        return self._modules.get(tenant)

    def remove(self, tenant: str) -> None:
        with self._lock:
            self._modules.pop(tenant, None)
            self._prune_pres()

    @property
    def instance_pres(self) -> int:
        """Pre-linked core modules kept for reuse: one per distinct deployed core module at most."""
        return len(self._pres)

    def _prune_pres(self) -> None:
        # Called with _lock held. A pre-link holds its compiled module; only deployed modules keep
        # theirs, so the dict is bounded by the tenants and the cache's byte budget stays true.
        deployed = {m.sha256 for m in self._modules.values()}
        for sha in [sha for sha in self._pres if sha not in deployed]:
            del self._pres[sha]

    def _check_core(self, artifact: Artifact) -> tuple[int, int]:
        assert isinstance(artifact, wasmtime.Module)
        check_core_interface(artifact)
        limits = SandboxLimits(
            memory_mib=LOAD_CHECK_MEMORY_MIB, fuel=LOAD_CHECK_FUEL, deadline_ms=LOAD_CHECK_DEADLINE_MS
        )
        store = self._store(limits)
        # The start function and `_initialize` run here, at deploy: their sleeps are bounded too.
        deadline = self._deadline(store, limits)
        try:
            with context.deadline_bound(deadline):
                instance = self._instantiate_for_check(store, artifact)
                exports = instance.exports(store)
                init = exports.get("_initialize")
                if isinstance(init, wasmtime.Func):
                    init(store)
                version_fn = exports[CORE_VERSION_EXPORT]
                assert isinstance(version_fn, wasmtime.Func)
                raw = version_fn(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            failure = _stopped(deadline) or _failure(e)
            raise InvocationFailed(
                failure.code,
                f"the load check (instantiate, {CORE_VERSION_EXPORT}()) failed: {failure.message}",
            ) from None
        stopped = _stopped(deadline)
        if stopped is not None:
            raise InvocationFailed(stopped.code, f"the load check failed: {stopped.message}")
        return parse_abi_version(int(raw))

    def _instantiate_for_check(self, store: wasmtime.Store, artifact: wasmtime.Module) -> wasmtime.Instance:
        try:
            return self._linker.instantiate(store, artifact)
        except wasmtime.Trap:
            raise
        except wasmtime.WasmtimeError as e:
            if "unknown import" in str(e) or "incompatible import" in str(e):
                raise InvocationFailed(Code.UNKNOWN_IMPORT, _first_line(str(e))) from None
            raise

    def _check_component(self, artifact: Artifact) -> tuple[int, int]:
        assert isinstance(artifact, wc.Component)
        version = (ABI_MAJOR, 0)
        for name in artifact.type.imports(self._engine):
            # e.g. "realm:tenant/host@1.0.0": the version of the interface is the ABI version.
            if name.startswith(f"{WIT_PACKAGE}/") and "@" in name:
                major, minor, *_ = [*name.rsplit("@", 1)[1].split("."), "0", "0"]
                if not (major.isdigit() and minor.isdigit()):
                    raise InvocationFailed(Code.ABI_UNSUPPORTED, f"the component imports {name}")
                version = max(version, parse_abi_version((int(major) << 16) | int(minor)))
        try:
            from . import component_binding
        except ImportError:  # TODO: component_binding.py lands separately; until then no check
            log.warning("component_binding is not available; component imports are not checked")
            return version
        component_binding.check_component(self._engine, artifact)
        return version

    # ---- invocations ------------------------------------------------------------------------

    async def invoke(
        self, module: TenantModule, ctx: InvocationContext, limits: SandboxLimits
    ) -> InvocationResult:
        if self._closing.is_set():
            raise RuntimeError("the sandbox is closed")
        loop = asyncio.get_running_loop()
        if module.kind == "core":
            return await loop.run_in_executor(self._pool, self._invoke_sync, module, ctx, limits)
        with self._idle:
            if self._abandoned >= self._max_abandoned:
                raise InvocationFailed(
                    Code.BUSY,
                    f"{self._abandoned} component runs are still asleep past their deadlines; "
                    "components are refused until they wake",
                )
        run = loop.run_in_executor(self._pool, self._invoke_sync, module, ctx, limits)
        # A component asleep in WASI 0.2 cannot be woken (wasmtime's own poll, in native code):
        # its thread stays with it, but its caller is answered at the deadline all the same.
        try:
            return await asyncio.wait_for(
                asyncio.shield(run), limits.deadline_ms / 1000 + COMPONENT_ANSWER_SLACK_S
            )
        except TimeoutError:
            pass
        with self._idle:
            self._abandoned += 1
        run.add_done_callback(self._woke)
        raise InvocationAbandoned(
            Code.TIMEOUT,
            "the invocation passed its deadline (still asleep in WASI; abandoned)",
            thread_done=run,
        )

    @property
    def abandoned(self) -> int:
        """Runs whose callers were answered while their threads are still asleep."""
        return self._abandoned

    def _woke(self, run: asyncio.Future[InvocationResult]) -> None:
        if not run.cancelled():
            run.exception()  # retrieved: nobody else waits for it
        with self._idle:
            self._abandoned -= 1

    def _invoke_sync(
        self, module: TenantModule, ctx: InvocationContext, limits: SandboxLimits
    ) -> InvocationResult:
        with self._idle:
            if self._closing.is_set():
                raise InvocationFailed(Code.TIMEOUT, "the sandbox is shutting down")
            self._running += 1
        try:
            return self._run(module, ctx, limits)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _run(self, module: TenantModule, ctx: InvocationContext, limits: SandboxLimits) -> InvocationResult:
        memories = module.memories if module.kind == "component" else None
        store = self._store(limits, component_memories=memories, wasi=module.needs_wasi)
        deadline = self._deadline(store, limits)
        ctx.begin(deadline, limits.max_output_bytes)
        fuel = limits.fuel if limits.fuel is not None else UNLIMITED_FUEL
        started = time.perf_counter()
        memory: Callable[[], int] = lambda: 0  # noqa: E731
        failure: InvocationFailed | None = None
        try:
            try:
                with context.deadline_bound(deadline):
                    if module.kind == "core":
                        memory = self._run_core(module, store, ctx)
                    else:
                        self._run_component(module, store, ctx)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                failure = _stopped(deadline) or _failure(e)
                log.info("tenant %s: invocation failed: %s (%s)", ctx.tenant, failure.message, failure.code)
            except InvocationFailed as e:
                # The guest reporting an error of its own after the host ended its run: the host's
                # reason is the invocation's.
                failure = _stopped(deadline) or e
            if failure is None:
                failure = _stopped(deadline)
            if failure is not None:
                # Raised here, without the traceback of the guest's call: that traceback's frames hold
                # the Store (the guest's memory with it), and the exception would keep them alive in a
                # reference cycle until a full collection found it.
                failure.__context__ = None
                raise failure.with_traceback(None)
            return InvocationResult(
                output="".join(ctx.output),
                host_calls=dict(ctx.host_calls),
                wall_s=time.perf_counter() - started,
                fuel_used=fuel - store.get_fuel(),
                memory_peak_bytes=memory(),
            )
        finally:
            # The context outlives the run (the caller holds it, and a failure's traceback holds this
            # frame): neither keeps the Store.
            deadline.release()
            del store, memory

    def _run_core(
        self, module: TenantModule, store: wasmtime.Store, ctx: InvocationContext
    ) -> Callable[[], int]:
        pre = self._instance_pre(module)
        with core_binding.invocation(ctx):
            try:
                instance = pre.instantiate(store)
            except wasmtime.Trap:
                raise
            except wasmtime.WasmtimeError as e:
                raise _instantiation_failure(e) from None
            exports = instance.exports(store)
            mem = exports["memory"]
            assert isinstance(mem, wasmtime.Memory)
            init = exports.get("_initialize")
            if isinstance(init, wasmtime.Func):
                init(store)
            run = exports[CORE_RUN_EXPORT]
            assert isinstance(run, wasmtime.Func)
            try:
                rc = int(run(store))
            except wasmtime.ExitTrap as e:  # WASI proc_exit (Go's os.Exit, panics): 0 is success
                rc = e.code
                if rc != 0:
                    raise _tenant_error(ctx, f"the module exited with status {rc}") from None
        if rc != 0:
            raise _tenant_error(ctx, f"{CORE_RUN_EXPORT} returned {rc}")
        return lambda: mem.data_len(store)

    def _run_component(self, module: TenantModule, store: wasmtime.Store, ctx: InvocationContext) -> None:
        assert isinstance(module.artifact, wc.Component)
        try:
            from . import component_binding
        except ImportError:  # TODO: component_binding.py lands separately
            raise InvocationFailed(Code.INVALID_MODULE, "components are not supported yet") from None
        with context.bound(ctx):
            component_binding.run_component(self._engine, store, module.artifact)

    def _instance_pre(self, module: TenantModule) -> wasmtime.InstancePre:
        pre = self._pres.get(module.sha256)
        if pre is None:
            assert isinstance(module.artifact, wasmtime.Module)
            pre = self._linker.instantiate_pre(module.artifact)
            with self._lock:
                # A module no tenant has deployed (any more) is pre-linked for this run only.
                if any(m.sha256 == module.sha256 for m in self._modules.values()):
                    pre = self._pres.setdefault(module.sha256, pre)
        return pre

    def _deadline(self, store: wasmtime.Store, limits: SandboxLimits) -> Deadline:
        # The interrupt runs on the run's own thread, inside a host call: the Store is its own.
        # It takes the fuel, not the epoch deadline: compiled code keeps the epoch deadline
        # cached while a function runs, but reloads its fuel after every call, so the guest
        # traps as soon as the host call returns (and the runner reports the deadline's reason).
        return Deadline(limits.deadline_ms / 1000, self._closing, lambda: store.set_fuel(0))

    def _store(
        self, limits: SandboxLimits, *, component_memories: int | None = None, wasi: bool = True
    ) -> wasmtime.Store:
        """A Store for one run: a core module's (`component_memories` None) or a component's
        defining that many linear memories."""
        store = wasmtime.Store(self._engine)
        budget = limits.memory_mib * MIB
        if component_memories is not None:
            # wasmtime's limiter caps each memory, not their sum: each of the component's memories
            # gets an equal share, and the store holds no more memories than the component defines.
            count = max(limits.instances, COMPONENT_MIN_INSTANCES)
            store.set_limits(
                memory_size=budget // max(1, component_memories),
                table_elements=limits.table_elements,
                instances=count,
                tables=count,
                memories=component_memories,
            )
        else:
            # One memory (checked at load) and the tables share the budget: each table may grow
            # to `table_elements`, so that much is kept off the memory's share.
            count = limits.instances
            tables = count * limits.table_elements * TABLE_ELEMENT_BYTES
            store.set_limits(
                memory_size=max(0, budget - tables),
                table_elements=limits.table_elements,
                instances=count,
                tables=count,
                memories=1,
            )
        store.set_fuel(limits.fuel if limits.fuel is not None else UNLIMITED_FUEL)
        ticks = math.ceil(limits.deadline_ms / 1000 / EPOCH_TICK_S) + 1
        with self._idle:
            # Under the lock close() bumps the epoch under: a Store made after that bump gets a
            # deadline that has already passed (the ticker no longer runs).
            self._max_ticks = max(self._max_ticks, ticks)
            store.set_epoch_deadline(0 if self._closing.is_set() else ticks)
        # Nothing inherited: no environment, arguments, files; stdout and stderr go nowhere
        # (`realm_log` is the tenant's channel). Capturing them with `stdout_custom` makes
        # wasmtime's I/O threads call into Python, which aborts noisily at interpreter exit.
        if wasi:
            store.set_wasi(wasmtime.WasiConfig())
        return store

    # ---- lifecycle --------------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(EPOCH_TICK_S):
            self._engine.increment_epoch()

    def close(self, grace_s: float = CLOSE_GRACE_S) -> int:
        """Stop: no run starts; runs in flight are interrupted (their epoch deadlines all pass at
        once, their sleeps and host-call waits end) and have `grace_s` to give their threads back.
        Returns how many did not: stuck in host code nothing reaches (a component asleep in WASI
        0.2), their threads keep the process from exiting normally."""
        with self._idle:
            if self._closing.is_set():
                return self._running
            self._closing.set()
        self._stop.set()
        self._ticker.join()
        with self._idle:
            for _ in range(self._max_ticks + 1):
                self._engine.increment_epoch()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            if not self._idle.wait_for(lambda: self._running == 0, timeout=grace_s):
                log.warning("%d WebAssembly runs did not end within %.0fs of closing", self._running, grace_s)
            return self._running


def _stopped(deadline: Deadline) -> InvocationFailed | None:
    """Why the host ended the run (time, output), if it did."""
    if deadline.stopped is None:
        return None
    return InvocationFailed(*deadline.stopped)


def guest_priority(nice: int) -> None:
    """Guests yield the CPU to the engines and the event loop: a tenant's spinning guests must not
    slow every other tenant's decoding and requests (Linux: the nice value is per thread)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: guests share the CPU as before
        log.debug("sandbox worker priority unchanged: %s", e)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:SHORT_MESSAGE] if lines else "unknown error"


def _trap_line(text: str) -> str:
    """The line that says what happened ("wasm trap: ..."), not the backtrace around it."""
    for line in text.splitlines():
        if "wasm trap:" in line:
            return line.strip()[:SHORT_MESSAGE]
    return _first_line(text)


def _instantiation_failure(e: wasmtime.WasmtimeError) -> InvocationFailed:
    text = str(e)
    if "exceeds memory limits" in text:  # "memory minimum size of N pages exceeds memory limits"
        return InvocationFailed(Code.MEMORY_LIMIT, _first_line(text))
    if "exceeds table limits" in text or "resource limit exceeded" in text:  # sizes and counts
        return InvocationFailed(Code.RESOURCE_LIMIT, _first_line(text))
    return InvocationFailed(Code.TRAP, _first_line(text))


def _tenant_error(ctx: InvocationContext, fallback: str) -> InvocationFailed:
    # The module's last error log is its reason (the Go SDK logs a failed handler's error there);
    # else what it emitted, if short: a long output is not a message.
    if ctx.last_error_log:
        return InvocationFailed(Code.TENANT_ERROR, f"{fallback}: {ctx.last_error_log[:SHORT_MESSAGE]}")
    out = "".join(ctx.output)
    return InvocationFailed(Code.TENANT_ERROR, out if 0 < len(out) <= SHORT_MESSAGE else fallback)


def _failure(e: wasmtime.Trap | wasmtime.WasmtimeError) -> InvocationFailed:
    if isinstance(e, wasmtime.ExitTrap):
        return InvocationFailed(Code.TENANT_ERROR, f"the module exited with status {e.code}")
    text = str(e)
    code = e.trap_code if isinstance(e, wasmtime.Trap) else None
    # Components report traps as WasmtimeError without a trap code: the text is all there is.
    if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in text:
        return InvocationFailed(Code.FUEL_EXHAUSTED, "the invocation ran out of fuel")
    if code == wasmtime.TrapCode.INTERRUPT or "wasm trap: interrupt" in text:
        return InvocationFailed(Code.TIMEOUT, "the invocation passed its deadline")
    if isinstance(e, wasmtime.Trap) or "wasm trap" in text:
        return InvocationFailed(Code.TRAP, _trap_line(text))
    return _instantiation_failure(e)
