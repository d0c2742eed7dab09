"""Realm's vector index against two other libraries from PyPI, in one run (issue 17).

100,000 x 384-dimensional unit vectors (MiniLM's width) drawn around 1,000 random centres (clustered, like
embeddings of real text; random uniform vectors make every index look worse than it is on real data), 200
held-out queries from the same distribution. For each index: recall@10 against exact search, search
latency p50/p95 of one query on one thread, build time (all cores), and bytes per vector (the serialized
index over the vector count). Realm's is `runtime/vectors/collection.py` (usearch HNSW: connectivity 16,
expansion 128/128), timed through `Collection.search`; faiss-cpu `IndexHNSWFlat` and hnswlib at the same
M / efConstruction / efSearch.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_vectors.py [--n 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from realm.runtime.vectors.collection import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH, Collection

DIMS = 384
K = 10
Matrix = npt.NDArray[np.float32]


@dataclass
class Result:
    name: str
    recall: float
    p50_ms: float
    p95_ms: float
    build_s: float
    bytes_per_vector: float


def data(n: int, queries: int, seed: int = 7) -> tuple[Matrix, Matrix]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIMS)).astype(np.float32)
    picks = rng.integers(0, len(centres), size=n + queries)
    x = centres[picks] + 0.6 * rng.normal(size=(n + queries, DIMS)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n].astype(np.float32), x[n:].astype(np.float32)


def truth(base: Matrix, queries: Matrix) -> list[set[int]]:
    scores = queries @ base.T
    return [set(np.argpartition(-row, K)[:K].tolist()) for row in scores]


def timed(
    search: Callable[[Matrix], list[int]], queries: Matrix, gold: list[set[int]]
) -> tuple[float, list[float]]:
    hits, lat = 0, []
    for q, g in zip(queries, gold, strict=True):
        t = time.perf_counter()
        found = search(q)
        lat.append(1000 * (time.perf_counter() - t))
        hits += len(g & set(found[:K]))
    return hits / (K * len(queries)), lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def realm(base: Matrix, queries: Matrix, gold: list[set[int]]) -> Result:
    c = Collection(DIMS)
    c.upsert([str(i) for i in range(len(base))], base, [None] * len(base), [{} for _ in range(len(base))])
    t = time.perf_counter()
    index = c.index()
    build = time.perf_counter() - t
    size = len(index.save())
    recall, lat = timed(lambda q: [int(h.id) for h in c.search(q, K)], queries, gold)
    return Result("realm (usearch)", recall, pct(lat, 0.5), pct(lat, 0.95), build, size / len(base))


def faiss_hnsw(base: Matrix, queries: Matrix, gold: list[set[int]]) -> Result:
    import faiss

    index = faiss.IndexHNSWFlat(DIMS, CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EXPANSION_ADD
    t = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - t
    index.hnsw.efSearch = EXPANSION_SEARCH
    size = len(faiss.serialize_index(index))
    faiss.omp_set_num_threads(1)
    recall, lat = timed(lambda q: index.search(q[None, :], K)[1][0].tolist(), queries, gold)
    return Result("faiss-cpu HNSWFlat", recall, pct(lat, 0.5), pct(lat, 0.95), build, size / len(base))


def hnswlib_index(base: Matrix, queries: Matrix, gold: list[set[int]]) -> Result:
    import os
    import tempfile

    import hnswlib

    index = hnswlib.Index(space="ip", dim=DIMS)
    index.init_index(max_elements=len(base), M=CONNECTIVITY, ef_construction=EXPANSION_ADD)
    t = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - t
    index.set_ef(EXPANSION_SEARCH)
    index.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "i.bin")
        index.save_index(path)
        size = os.path.getsize(path)
    recall, lat = timed(lambda q: index.knn_query(q, k=K)[0][0].tolist(), queries, gold)
    return Result("hnswlib", recall, pct(lat, 0.5), pct(lat, 0.95), build, size / len(base))


def exact(base: Matrix, queries: Matrix, gold: list[set[int]]) -> Result:
    c = Collection(DIMS)
    c.upsert([str(i) for i in range(len(base))], base, [None] * len(base), [{} for _ in range(len(base))])
    recall, lat = timed(lambda q: [r for r, _ in c._exact(q, K, None)], queries, gold)
    return Result(
        "exact scan (numpy)", recall, pct(lat, 0.5), pct(lat, 0.95), 0.0, float(base.itemsize * DIMS)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    started = time.monotonic()
    base, queries = data(args.n, args.queries)
    gold = truth(base, queries)
    results = []
    for run in (realm, faiss_hnsw, hnswlib_index, exact):
        r = run(base, queries, gold)
        print(
            f"  {r.name}: recall@10 {r.recall:.4f}, p50 {r.p50_ms:.3f} ms, p95 {r.p95_ms:.3f} ms", flush=True
        )
        results.append(r)
    print(
        f"\n== {args.n:,} x {DIMS} clustered unit vectors, {args.queries} queries, k={K}; search on one "
        "thread, build on all cores; targets for Realm: recall@10 >= 0.95, p95 <= 5 ms =="
    )
    print("| index | recall@10 | search p50 ms | search p95 ms | build s | bytes/vector |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.name} | {r.recall:.4f} | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.build_s:.1f} "
            f"| {r.bytes_per_vector:.0f} |"
        )
    print(f"whole bench: {time.monotonic() - started:.0f} s (Realm's latency includes mapping keys to items)")


if __name__ == "__main__":
    main()
