"""Runs tenants' WebAssembly: one Engine per process, one Store and instance per invocation.

Each invocation runs on a worker thread of the sandbox's pool (a wasmtime Store is used by one
thread at a time; ctypes releases the GIL while WebAssembly runs, so stores run in parallel).
Limits: linear memory and table sizes and instance counts through the Store's limiter, CPU
through fuel, wall-clock time through epoch interruption driven by a ticker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
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
from .context import InvocationContext
from .modules import (
    Artifact,
    InvocationFailed,
    ModuleCache,
    TenantModule,
    check_core_interface,
    detect_kind,
    parse_abi_version,
)

__all__ = ["InvocationFailed", "InvocationResult", "Sandbox", "SandboxLimits", "TenantModule"]

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


@dataclass(frozen=True)
class SandboxLimits:
    """Per-invocation limits. `memory_mib` caps each linear memory; `instances` also caps the
    number of tables and memories (for components, at least COMPONENT_MIN_INSTANCES). The
    sandbox's own record: whoever invokes builds it (runtime/serving/invocations.py, from a tenant's
    quotas)."""

    memory_mib: int = 64
    fuel: int | None = None
    deadline_ms: int = 30_000
    table_elements: int = 10_000
    instances: int = 8


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
    def __init__(self, cache_dir: Path, *, max_workers: int = 64) -> None:
        self._engine, digest = make_engine()
        self._cache = ModuleCache(self._engine, cache_dir, digest)
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        core_binding.define_realm(self._linker)
        self._pres: dict[str, wasmtime.InstancePre] = {}
        self._modules: dict[str, TenantModule] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="realm-wasm")
        self._stop = threading.Event()
        self._max_ticks = 1
        self._ticker = threading.Thread(target=self._tick, name="realm-wasm-epoch", daemon=True)
        self._ticker.start()

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    @property
    def compiles(self) -> int:
        """Modules compiled (not loaded from the disk cache) by this sandbox."""
        return self._cache.compiles

    # ---- modules ----------------------------------------------------------------------------

    def load(self, tenant: str, wasm: bytes) -> TenantModule:
        kind = detect_kind(wasm)
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
        )

    def deploy(self, tenant: str, wasm: bytes) -> TenantModule:
        module = self.load(tenant, wasm)
        with self._lock:
            self._modules[tenant] = module
        return module

    def current(self, tenant: str) -> TenantModule | None:
        return self._modules.get(tenant)

    def remove(self, tenant: str) -> None:
        with self._lock:
            self._modules.pop(tenant, None)

    def _check_core(self, artifact: Artifact) -> tuple[int, int]:
        assert isinstance(artifact, wasmtime.Module)
        check_core_interface(artifact)
        limits = SandboxLimits(
            memory_mib=LOAD_CHECK_MEMORY_MIB, fuel=LOAD_CHECK_FUEL, deadline_ms=LOAD_CHECK_DEADLINE_MS
        )
        store = self._store(limits)
        try:
            try:
                instance = self._linker.instantiate(store, artifact)
            except wasmtime.WasmtimeError as e:
                if "unknown import" in str(e) or "incompatible import" in str(e):
                    raise InvocationFailed(Code.UNKNOWN_IMPORT, _first_line(str(e))) from None
                raise
            exports = instance.exports(store)
            init = exports.get("_initialize")
            if isinstance(init, wasmtime.Func):
                init(store)
            version_fn = exports[CORE_VERSION_EXPORT]
            assert isinstance(version_fn, wasmtime.Func)
            raw = version_fn(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            failure = _failure(e)
            raise InvocationFailed(
                failure.code,
                f"the load check (instantiate, {CORE_VERSION_EXPORT}()) failed: {failure.message}",
            ) from None
        return parse_abi_version(int(raw))

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
        if self._stop.is_set():
            raise RuntimeError("the sandbox is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._invoke_sync, module, ctx, limits)

    def _invoke_sync(
        self, module: TenantModule, ctx: InvocationContext, limits: SandboxLimits
    ) -> InvocationResult:
        store = self._store(limits, component=module.kind == "component", wasi=module.needs_wasi)
        fuel = limits.fuel if limits.fuel is not None else UNLIMITED_FUEL
        started = time.perf_counter()
        memory: Callable[[], int] = lambda: 0  # noqa: E731
        try:
            if module.kind == "core":
                memory = self._run_core(module, store, ctx)
            else:
                self._run_component(module, store, ctx)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            failure = _failure(e)
            log.info("tenant %s: invocation failed: %s (%s)", ctx.tenant, failure.message, failure.code)
            raise failure from None
        return InvocationResult(
            output="".join(ctx.output),
            host_calls=dict(ctx.host_calls),
            wall_s=time.perf_counter() - started,
            fuel_used=fuel - store.get_fuel(),
            memory_peak_bytes=memory(),
        )

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
                pre = self._pres.setdefault(module.sha256, pre)
        return pre

    def _store(self, limits: SandboxLimits, *, component: bool = False, wasi: bool = True) -> wasmtime.Store:
        store = wasmtime.Store(self._engine)
        count = max(limits.instances, COMPONENT_MIN_INSTANCES) if component else limits.instances
        store.set_limits(
            memory_size=limits.memory_mib * MIB,
            table_elements=limits.table_elements,
            instances=count,
            tables=count,
            memories=count,
        )
        store.set_fuel(limits.fuel if limits.fuel is not None else UNLIMITED_FUEL)
        ticks = math.ceil(limits.deadline_ms / 1000 / EPOCH_TICK_S) + 1
        self._max_ticks = max(self._max_ticks, ticks)
        store.set_epoch_deadline(ticks)
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

    def close(self) -> None:
        """Stop: guests still running are interrupted (their epoch deadlines all pass at once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._ticker.join()
        for _ in range(self._max_ticks + 1):
            self._engine.increment_epoch()
        self._pool.shutdown(wait=True, cancel_futures=True)


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
