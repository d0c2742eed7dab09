"""Soak (issue 13): a real `realm serve` (a subprocess on loopback) serving good tenants beside hostile
ones for `--minutes`, and the server's RSS throughout.

The soak itself is tests/soak.py (tests/runtime/test_soak.py runs it for a minute in CI): two good
tenants send chat completions and invoke a module that generates, one request in flight each; a
flooding tenant keeps eight requests in flight against a 6/min rate quota; a sleeping tenant sleeps
through WASI past its deadline (`SLEEP_MS`), a spinning one loops past its deadline, a trapping one hits
`unreachable`, a memory-bombing one grows its memory to the cap and writes every byte. A warm-up of
`--warmup` seconds comes first; RSS is taken idle after it and idle at the end.

Prints last: RSS at start, after the warm-up, at the end and its maximum; end / after warm-up (target
<= 1.1 over a 10-minute soak); requests per outcome per tenant kind; the good tenants' chat and invoke
p50/p99; every rule the soak broke (none expected). Exits 1 if it broke any, or if the RSS ratio is
over 1.1.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_soak.py [--minutes 10] [--warmup 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.harness import print_figures
from bench.support import exit_on_sigterm
from tests import soak

RSS_RATIO_TARGET = 1.1


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak after the warm-up")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load first (default 60)")
    args = ap.parse_args()
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)

    with soak.soaked_server() as server:
        progress(f"realm serve ready at {server.base_url} (pid {server.process.pid}), modules deployed")
        record = soak.soak(server, warmup_s=args.warmup, soak_s=args.minutes * 60, progress=progress)
    ratio = record.rss_end / record.rss_warm
    notes = [
        f"soak {args.minutes:g} min after a {args.warmup:g} s warm-up; WASI sleep {soak.SLEEP_MS} ms "
        f"past a {soak.SLEEPER_DEADLINE_MS} ms deadline; memory cap {soak.MEMORY_CAP_MIB} MiB",
        f"RSS end / after warm-up {ratio:.3f} (target <= {RSS_RATIO_TARGET})",
    ]
    lines = [*record.summary(), "problems: " + ("none" if not record.problems else "")]
    lines += [f"  {p}" for p in record.problems]
    print_figures("Soak: good tenants beside hostile ones", lines, notes)
    sys.exit(1 if record.problems or ratio > RSS_RATIO_TARGET else 0)


if __name__ == "__main__":
    main()
