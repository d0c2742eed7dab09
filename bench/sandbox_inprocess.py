"""bench_sandbox.py's parts 2 and 3: the sandbox in this process, with a stand-in for the runtime's host
services (echo needs none; held invocations wait in a generate that returns canned text). They call the
sandbox's internal API, so they measure this checkout only (no --against), and every import of that API
is in this module.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from realm.runtime.sandbox.abi import GenerateParams, GenerationPayload, ModelInfoPayload
from realm.runtime.sandbox.context import InvocationContext
from realm.runtime.sandbox.runner import Sandbox, SandboxLimits, TenantModule
from tests.go_builds import build_go_example
from tests.sandbox_builds import build_example

ROOT = Path(__file__).resolve().parent.parent


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class HeldServices:
    """Stand-in for the runtime's host services: generate waits until `release` is set."""

    def __init__(self, expect: int = 0) -> None:
        self.release = asyncio.Event()
        self.all_arrived = asyncio.Event()
        self.expect = expect
        self.arrived = 0

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        self.arrived += 1
        if self.arrived >= self.expect:
            self.all_arrived.set()
        await self.release.wait()
        return GenerationPayload(text="ok", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        return [1]

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        return ""

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        return ModelInfoPayload(
            name=model, version="0", engine="none", context_length=1, vocab_size=1, has_chat_template=False
        )


def ctx_for(
    loop: asyncio.AbstractEventLoop, services: HeldServices, tenant: str, data: str
) -> InvocationContext:
    return InvocationContext(
        tenant=tenant, input_data=data, services=services, loop=loop, on_output=lambda _c: None
    )


def cold_invokes(
    sandbox: Sandbox, modules: dict[str, TenantModule], n: int
) -> dict[str, tuple[float, float, float, float]]:
    """p50/p99 in ms on the worker thread, then through Sandbox.invoke."""
    res: dict[str, tuple[float, float, float, float]] = {}
    limits = SandboxLimits()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        services = HeldServices()
        for name, module in modules.items():
            runs = n if module.kind == "core" else n // 2
            for _ in range(5):
                sandbox._invoke_sync(module, ctx_for(loop, services, "bench", '{"hi":1}'), limits)
            direct: list[float] = []
            for _ in range(runs):
                ctx = ctx_for(loop, services, "bench", '{"hi":1}')
                t0 = time.perf_counter()
                sandbox._invoke_sync(module, ctx, limits)
                direct.append((time.perf_counter() - t0) * 1000)
                assert ctx.output == ['{"hi":1}'], ctx.output
            via: list[float] = []
            for _ in range(runs):
                ctx = ctx_for(loop, services, "bench", '{"hi":1}')
                t0 = time.perf_counter()
                await sandbox.invoke(module, ctx, limits)
                via.append((time.perf_counter() - t0) * 1000)
            res[name] = (statistics.median(direct), pct(direct, 0.99), statistics.median(via), pct(via, 0.99))
            print(f"cold {name}: {res[name]}", flush=True)

    asyncio.run(run())
    return res


def with_custom_section(wasm: bytes, tag: str) -> bytes:
    """Same code, distinct bytes: a custom section (id 0) appended makes a distinct module."""
    name = b"realm-bench"
    payload = bytes([len(name)]) + name + tag.encode()
    return wasm + b"\x00" + _leb(len(payload)) + payload


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def memory(cache: Path) -> dict[str, float]:
    res: dict[str, float] = {}
    go_echo = build_go_example("echo").read_bytes()
    py_chat = build_example("chat").read_bytes()
    sandbox = Sandbox(cache / "mem")
    try:
        gc.collect()
        base = rss()
        for i in range(1000):
            sandbox.deploy(f"go-{i}", go_echo)
        gc.collect()
        res["go_1000_shared_mib"] = (rss() - base) / 2**20
        # Distinct compiled Go modules: each is its own artifact (compiled once, then cached on disk).
        distinct = 8
        before = rss()
        for i in range(distinct):
            sandbox.deploy(f"go-distinct-{i}", with_custom_section(go_echo, f"t{i}"))
        gc.collect()
        res["go_distinct_per_module_mib"] = (rss() - before) / distinct / 2**20

        # 64 Python-tenant invocations alive at once, each parked in a generate call.
        chat = sandbox.deploy("py", py_chat)

        async def hold() -> float:
            loop = asyncio.get_running_loop()
            services = HeldServices(expect=64)
            before = rss()
            tasks = [
                asyncio.create_task(
                    sandbox.invoke(chat, ctx_for(loop, services, "py", '{"question":"hi"}'), SandboxLimits())
                )
                for _ in range(64)
            ]
            await services.all_arrived.wait()
            held = rss() - before
            services.release.set()
            await asyncio.gather(*tasks)
            return held

        res["py_64_concurrent_mib"] = asyncio.run(hold()) / 2**20
        res["py_component_mib"] = len(py_chat) / 2**20
        cached = [p for p in (cache / "mem").rglob("*") if p.is_file() and p.stat().st_size > 10 * 2**20]
        res["py_compiled_cache_mib"] = max((p.stat().st_size for p in cached), default=0) / 2**20
        # RSS per distinct Python tenant: a distinct component, deserialized and invoked once.
        before = rss()
        n_py = 3
        for i in range(n_py):
            mod = sandbox.deploy(f"py-distinct-{i}", with_custom_section(py_chat, f"p{i}"))

            async def once(m: TenantModule = mod) -> None:
                loop = asyncio.get_running_loop()
                services = HeldServices()
                services.release.set()
                await sandbox.invoke(m, ctx_for(loop, services, "py", '{"question":"hi"}'), SandboxLimits())

            asyncio.run(once())
        gc.collect()
        res["py_distinct_rss_mib"] = (rss() - before) / n_py / 2**20
    finally:
        sandbox.close()
    return res


@dataclass
class InProcessFigures:
    compiles: int
    cold: dict[str, tuple[float, float, float, float]]  # module: p50, p99 thread; p50, p99 invoke (ms)
    memory: dict[str, float]


def measure(cache: Path, cold_runs: int = 400) -> InProcessFigures:
    """Cold invokes from a second sandbox on the same compiled-module cache, then memory."""
    sandbox = Sandbox(cache / "cold")
    wasm = {
        "WAT echo": ("wat", bytes(wasmtime.wat2wasm((ROOT / "tests/wat/echo.wat").read_text()))),
        "Go echo": ("go", build_go_example("echo").read_bytes()),
        "Python echo": ("py", build_example("echo").read_bytes()),
    }
    for tenant, payload in wasm.values():
        sandbox.deploy(tenant, payload)
    compiles = sandbox.compiles
    # A second sandbox on the same cache: everything below must come from the cache.
    sandbox.close()
    sandbox = Sandbox(cache / "cold")
    modules = {name: sandbox.deploy(tenant, payload) for name, (tenant, payload) in wasm.items()}
    assert sandbox.compiles == 0, "cold invokes must deserialize from the cache"
    cold = cold_invokes(sandbox, modules, cold_runs)
    sandbox.close()
    return InProcessFigures(compiles=compiles, cold=cold, memory=memory(cache))


def print_figures(f: InProcessFigures) -> None:
    mem = f.memory
    print()
    print(f"== Cold invoke (new Store + instantiate + first host call), ms; {f.compiles} compiles, then 0 ==")
    print(f"{'module':>12} {'p50 thread':>11} {'p99 thread':>11} {'p50 invoke':>11} {'p99 invoke':>11}")
    for name, (p50, p99, v50, v99) in f.cold.items():
        print(f"{name:>12} {p50:>11.3f} {p99:>11.3f} {v50:>11.3f} {v99:>11.3f}")
    print("targets p50: WAT <= 0.1, Go <= 1, Python <= 2")
    print()
    print("== Memory ==")
    print(
        "1,000 Go tenants resident (one shared compiled module): "
        f"{mem['go_1000_shared_mib']:.1f} MiB (target <= 2048)"
    )
    print(f"distinct compiled Go module, each: {mem['go_distinct_per_module_mib']:.1f} MiB RSS")
    print(f"64 concurrent Python-tenant invocations: {mem['py_64_concurrent_mib']:.1f} MiB (target <= 1024)")
    print(
        f"per distinct Python tenant: {mem['py_component_mib']:.1f} MiB component + "
        f"{mem['py_compiled_cache_mib']:.1f} MiB compiled on disk, {mem['py_distinct_rss_mib']:.1f} MiB RSS"
    )
