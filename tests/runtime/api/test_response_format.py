"""OpenAI's `response_format` against the real runtime (SmolLM2, llama.cpp, llguidance), through the
official `openai` client: JSON mode and JSON schemas on both endpoints, streamed and not, and every way a
format can be wrong."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from conftest import MODEL, Server
from pydantic import BaseModel, ConfigDict

from realm.runtime.api.routes_openai import _generation_error
from realm.runtime.serving.errors import InvalidConstraint
from realm.runtime.serving.requests import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class City(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    country: str
    population: int
    coastal: bool


CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
        "coastal": {"type": "boolean"},
    },
    "required": ["name", "country", "population", "coastal"],
    "additionalProperties": False,
}
CITY_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
}
ASK = [{"role": "user", "content": "Describe Lisbon as a JSON object."}]


def test_chat_json_schema_strict_parses_with_the_clients_own_parse(server: Server) -> None:
    """`client.chat.completions.parse` sends a strict json_schema made from a pydantic model; the answer
    parses into it."""
    r = server.client().chat.completions.parse(
        model=MODEL,
        messages=ASK,
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, City)


def test_chat_json_schema_streamed_validates(server: Server) -> None:
    chunks = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=CITY_FORMAT,
        max_tokens=120,
        temperature=0.8,
        seed=3,
        stream=True,
    )
    parts = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in chunks if c.choices]
    assert parts[-1][1] == "stop"
    City.model_validate_json("".join(text for text, _ in parts))


def test_chat_json_object_is_one_json_object(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with the key 'colour'."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_chat_json_object_streamed_is_one_json_object(server: Server) -> None:
    chunks = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with the key 'colour'."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


def test_completion_json_schema_through_extra_body(server: Server) -> None:
    """The legacy endpoint takes response_format as vLLM does; OpenAI's client sends it in extra_body."""
    r = server.client().completions.create(
        model=MODEL,
        prompt="Lisbon as JSON:",
        max_tokens=120,
        temperature=0,
        extra_body={"response_format": CITY_FORMAT},
    )
    assert r.choices[0].finish_reason == "stop"
    City.model_validate_json(r.choices[0].text)


def test_completion_json_schema_streamed_validates(server: Server) -> None:
    chunks = server.client().completions.create(
        model=MODEL,
        prompt="Lisbon as JSON:",
        max_tokens=120,
        temperature=0,
        stream=True,
        extra_body={"response_format": CITY_FORMAT},
    )
    City.model_validate_json("".join(c.choices[0].text for c in chunks if c.choices))


def test_text_format_is_the_unconstrained_answer(server: Server) -> None:
    """`{"type": "text"}` changes nothing: greedy, the same text as without a response_format."""
    client = server.client()
    ask: dict[str, Any] = {"model": MODEL, "messages": ASK, "max_tokens": 24, "temperature": 0}
    plain = client.chat.completions.create(**ask)
    text = client.chat.completions.create(**ask, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


HOSTILE: list[tuple[str, Any, str]] = [
    ("unknown type", {"type": "xml"}, "response_format.type"),
    ("no type", {"json_schema": {"name": "x", "schema": {}}}, "response_format.type"),
    ("json_schema without its object", {"type": "json_schema"}, "response_format"),
    (
        "json_schema object on json_object",
        {"type": "json_object", "json_schema": {"name": "x"}},
        "response_format",
    ),
    ("json_schema without schema", {"type": "json_schema", "json_schema": {"name": "x"}}, "response_format"),
    ("schema not an object", _schema_format([{"type": "string"}]), "response_format.json_schema.schema"),
    (
        "bad name",
        {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
        "response_format.json_schema.name",
    ),
    ("unknown field", {"type": "json_object", "grammar": "x"}, "response_format.grammar"),
    (
        "schema under its Python name",
        {"type": "json_schema", "json_schema": {"name": "x", "json_schema": {}}},
        "response_format.json_schema.json_schema",
    ),
    (
        "keyword the engine does not implement",
        _schema_format({"type": "object", "if": {}, "then": {}}),
        "response_format",
    ),
    ("unknown JSON type", _schema_format({"type": "frobnicate"}), "response_format"),
    ("dangling $ref", _schema_format({"$ref": "#/$defs/nope"}), "response_format"),
    ("bad pattern", _schema_format({"type": "string", "pattern": "(a"}), "response_format"),
    ("too large", _schema_format({"enum": ["v" * 1000] * (MAX_SCHEMA_BYTES // 1000 + 1)}), "response_format"),
    ("too deep", _schema_format(_deep(MAX_SCHEMA_DEPTH)), "response_format"),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("case", "fmt", "param"), HOSTILE, ids=[c for c, _, _ in HOSTILE])
def test_a_bad_response_format_is_400_naming_it(
    server: Server, path: str, case: str, fmt: Any, param: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "response_format": fmt}
    body.update({"messages": ASK} if path == CHAT else {"prompt": "Hi"})
    with server.http() as http:
        r = http.post(path, json=body, headers=server.headers())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error


def test_a_schema_just_within_the_bounds_is_served(server: Server) -> None:
    """The bounds refuse only what is past them: a schema MAX_SCHEMA_DEPTH - 1 levels deep is fine."""
    with server.http() as http:
        r = http.post(
            COMPLETIONS,
            json={
                "model": MODEL,
                "prompt": "[",
                "max_tokens": 4,
                "response_format": _schema_format(_deep(MAX_SCHEMA_DEPTH - 1)),
            },
            headers=server.headers(),
        )
    assert r.status_code == 200, r.text


def test_the_official_client_raises_bad_request_for_an_invalid_schema(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format=_schema_format({"type": "frobnicate"}),
            max_tokens=4,
        )
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == "response_format"


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"enum": ["v" * 1000] * (MAX_SCHEMA_BYTES // 1000 + 1)}, f"at most {MAX_SCHEMA_BYTES} are allowed"),
        (_deep(MAX_SCHEMA_DEPTH), f"at most {MAX_SCHEMA_DEPTH} are allowed"),
    ],
    ids=["bytes", "depth"],
)
def test_a_schema_past_the_bounds_is_refused_before_it_compiles(
    server: Server, schema: dict[str, Any], says: str
) -> None:
    with server.http() as http:
        r = http.post(
            COMPLETIONS,
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "response_format": _schema_format(schema)},
            headers=server.headers(),
        )
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "invalid_constraint")
    assert says in error["message"]


def test_a_constraint_the_engine_refuses_later_still_names_response_format() -> None:
    """Checked before admission, a constraint the engine still refuses (at its start or mid-stream) is
    the same 400 naming the field, not a bare engine error."""
    error = _generation_error(InvalidConstraint("The grammar is too large."))
    assert (error.status, error.code, error.param) == (400, "invalid_constraint", "response_format")
