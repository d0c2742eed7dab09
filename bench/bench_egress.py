"""bench_egress.py: what the egress checks cost per call (issue 16).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_egress.py [--rounds 5] [--checks 20000] [--fetches 300]

Two parts, figures last:

- `check`: `check_url` alone (URL parsing and normalization, the allowlist of 20 Spin patterns, the
  address policy) per call, p50 and p99 in microseconds, for an IP literal and for a name; the name
  is answered by an in-memory resolver (a fake at the resolver seam: the pod's DNS is not ours to
  time), so the figure is the checks' own cost. Target: p50 at most 1 ms.
- `fetch`: a GET of 2 KiB from an aiohttp server on 127.0.0.1, interleaved through bench/harness.py:
  `checked` (runtime/egress/client.fetch: the checks, a pinned transport, the byte cap and deadline)
  against `plain` (an httpx client with a fresh connection per call, as `fetch` makes one, and no
  checks). Per-call p50 and p99 in milliseconds, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from aiohttp import web

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from realm.runtime.egress.addresses import AddressPolicy
from realm.runtime.egress.allowlist import Allowlist
from realm.runtime.egress.checks import EgressPolicy, check_url
from realm.runtime.egress.client import Request, fetch
from realm.runtime.egress.transport import default_ssl_context
from realm.runtime.egress.urls import IPAddress

BODY = b"x" * 2048
PATTERNS = [f"https://api{i}.example.com" for i in range(18)] + [
    "https://93.184.216.34",
    "https://*.internal.example:8443",
]


class MemoryResolver:
    """A fake at the resolver seam: every name is 127.0.0.1, at once."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def time_checks(policy: EgressPolicy, url: str, n: int) -> list[float]:
    resolver = MemoryResolver()
    samples: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        await check_url(policy, url, resolver)
        samples.append(time.perf_counter() - started)
    return samples


@contextmanager
def loopback_server() -> Iterator[int]:
    """An aiohttp server on 127.0.0.1 in a thread of its own, so its work is not on the caller's loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        async def body(request: web.Request) -> web.Response:
            return web.Response(body=BODY)

        app = web.Application()
        app.router.add_get("/data", body)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        runner_box.append(runner)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def fetch_side(name: str, port: int, n: int, checked: bool) -> Side:
    url = f"http://127.0.0.1:{port}/data"
    policy = EgressPolicy(
        Allowlist.parse([*PATTERNS, f"http://127.0.0.1:{port}"]), AddressPolicy.from_cidrs(["127.0.0.0/8"])
    )
    ssl_context = default_ssl_context()

    async def one() -> None:
        if checked:
            await fetch(
                policy,
                Request("GET", url),
                resolver=MemoryResolver(),
                ssl_context=ssl_context,
                max_bytes=1 << 20,
                deadline=time.monotonic() + 10,
            )
        else:
            async with httpx.AsyncClient(verify=ssl_context, trust_env=False) as client:
                (await client.get(url)).raise_for_status()

    @contextmanager
    def session() -> Iterator[Repetition]:
        loop = asyncio.new_event_loop()

        def repetition() -> Figures:
            samples: list[float] = []
            for _ in range(n):
                started = time.perf_counter()
                loop.run_until_complete(one())
                samples.append(time.perf_counter() - started)
            p50, p99 = percentiles(samples)
            return {"p50 ms": p50 * 1000, "p99 ms": p99 * 1000}

        try:
            yield repetition
        finally:
            loop.close()

    return Side(name, session=session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=20000, help="check_url calls per case")
    parser.add_argument("--fetches", type=int, default=300, help="fetches per side and round")
    args = parser.parse_args()

    policy = EgressPolicy(Allowlist.parse(PATTERNS), AddressPolicy.from_cidrs(["127.0.0.0/8"]))
    check_lines = ["| check_url | p50 µs | p99 µs |", "|---|---|---|"]
    for label, url in (
        ("name, last pattern (in-memory resolver)", "https://svc.internal.example:8443/v1/items?q=1"),
        ("IP literal (no lookup)", "https://93.184.216.34/v1/items"),
        ("name, first pattern", "https://api0.example.com/v1/items"),
    ):
        print(f"check: {label}, {args.checks} calls", flush=True)
        p50, p99 = percentiles(asyncio.run(time_checks(policy, url, args.checks)))
        check_lines.append(f"| {label} | {p50 * 1e6:.1f} | {p99 * 1e6:.1f} |")

    with loopback_server() as port:
        sides = [
            fetch_side("checked", port, args.fetches, True),
            fetch_side("plain", port, args.fetches, False),
        ]
        result = interleave(sides, args.rounds)
    fetch_lines = figures_table(result, [("checked", "plain")], spec=".3f")

    print_figures(
        "bench_egress: the checks' cost per call",
        [*check_lines, "", *fetch_lines],
        notes=[
            f"check_url: {args.checks} calls per case, 20 Spin patterns, the default address policy plus "
            "127.0.0.0/8",
            f"fetch: GET of {len(BODY)} B on loopback, {args.fetches} calls per side and round; "
            + describe(args.rounds),
        ],
    )


if __name__ == "__main__":
    main()
