"""OpenAI tool calling on /v1/chat/completions against the real runtime (SmolLM2, llama.cpp, llguidance),
through the official `openai` client: `required`, named, `auto` and parallel calls, streamed and not,
the whole call -> tool result -> answer flow, and every way a request with tools can be wrong."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from conftest import MODEL, Server

from realm.runtime.serving.tool_calls import MAX_TOOLS, MAX_TOOLS_BYTES

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
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]


def _valid(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    assert isinstance(args, dict)
    return args


def _streamed(stream: Any) -> tuple[dict[int, dict[str, Any]], list[Any], str | None]:
    """Calls by index rebuilt from the deltas, the deltas themselves, and the finish reason."""
    calls: dict[int, dict[str, Any]] = {}
    deltas: list[Any] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                deltas.append(d)
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id is not None:
                    call["id"] = d.id
                if d.function is not None and d.function.name is not None:
                    call["name"] = d.function.name
                if d.function is not None and d.function.arguments:
                    call["arguments"] += d.function.arguments
    return calls, deltas, finish


def test_required_answers_with_a_valid_call(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls and all(c.id.startswith("call_") and c.type == "function" for c in calls)
    for c in calls:
        _valid(c.function.name, c.function.arguments)


def test_named_choice_calls_that_function_once(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=200,
    )
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    _valid("get_time", calls[0].function.arguments)


def test_auto_can_answer_in_plain_text(server: Server) -> None:
    """`auto` leaves a plain answer free: a greeting needs no tool."""
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello to me in one short sentence."}],
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0,
        max_tokens=30,
    )
    choice = r.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content


def test_auto_streams_plain_text_as_content(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello to me in one short sentence."}],
        tools=[WEATHER],
        temperature=0,
        max_tokens=30,
        stream=True,
    )
    text, calls, finish = "", 0, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            calls += len(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert text and calls == 0
    assert finish in ("stop", "length")


def test_parallel_calls_false_gives_one_call(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    assert len(r.choices[0].message.tool_calls or []) == 1


def test_streamed_calls_arrive_as_openai_deltas(server: Server) -> None:
    """Each call's first delta has its index, id, type and name with empty arguments; later deltas of
    that index carry only argument fragments, which join into valid arguments."""
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,
        stream=True,
    )
    calls, deltas, finish = _streamed(stream)
    assert finish == "tool_calls"
    firsts = [d for d in deltas if d.id is not None]
    assert [d.index for d in firsts] == list(range(len(calls)))
    for d in firsts:
        assert d.type == "function" and d.function.name and d.function.arguments == ""
    rest = [d for d in deltas if d.id is None]
    assert all(d.function.name is None and d.function.arguments for d in rest)
    for call in calls.values():
        _valid(call["name"], call["arguments"])


def test_streamed_parallel_calls_are_not_glued(server: Server) -> None:
    """Two calls asked for: each index's fragments form one object on their own."""
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "system",
                "content": "Call get_weather for every city the user names, one call per city.",
            },
            {"role": "user", "content": "Weather in Paris, and weather in Rome?"},
        ],
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    calls, _, finish = _streamed(stream)
    assert finish == "tool_calls"
    assert len(calls) >= 2
    for call in calls.values():
        _valid(call["name"], call["arguments"])


def test_the_whole_client_flow(server: Server) -> None:
    """call -> the client runs the tool -> a tool message -> the model answers in text."""
    client = server.client()
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120
    )
    message = first.choices[0].message
    calls = message.tool_calls or []
    assert calls
    messages.append(message)  # as OpenAI's own examples do: the reply object itself
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c.id, "content": "22 degrees and sunny"})
    final = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=60
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content


# ---- hostile input ---------------------------------------------------------------------------------


def _refused(server: Server, **fields: Any) -> openai.BadRequestError:
    body: dict[str, Any] = {"model": MODEL, "messages": ASK, "max_tokens": 10, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**body)
    return e.value


def _param(e: openai.BadRequestError) -> str | None:
    body: Any = e.body
    return body.get("param") if isinstance(body, dict) else None


def test_a_schema_that_does_not_compile_is_refused_naming_it(server: Server) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}},
    }
    e = _refused(server, tools=[WEATHER, bad])
    assert _param(e) == "tools[1].function.parameters"


def test_a_schema_that_is_not_an_object_is_refused(server: Server) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    assert _param(_refused(server, tools=[bad])) == "tools[0].function.parameters"


def test_duplicate_names_are_refused(server: Server) -> None:
    assert _param(_refused(server, tools=[WEATHER, WEATHER])) == "tools[1].function.name"


def test_a_bad_name_is_refused(server: Server) -> None:
    bad = {"type": "function", "function": {"name": "no spaces", "parameters": {"type": "object"}}}
    assert _param(_refused(server, tools=[bad])) == "tools[0].function.name"


def test_tool_choice_naming_an_unknown_function_is_refused(server: Server) -> None:
    e = _refused(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert _param(e) == "tool_choice"


def test_required_without_tools_is_refused(server: Server) -> None:
    assert _param(_refused(server, tool_choice="required")) == "tool_choice"


def test_a_tool_message_answering_no_call_is_refused(server: Server) -> None:
    messages = [*ASK, {"role": "tool", "tool_call_id": "call_unknown", "content": "22"}]
    assert _param(_refused(server, messages=messages, tools=TOOLS)) == "messages[1].tool_call_id"


def test_a_tool_message_without_its_id_is_refused(server: Server) -> None:
    messages = [*ASK, {"role": "tool", "content": "22"}]
    assert _param(_refused(server, messages=messages)) == "messages[1].tool_call_id"


def test_too_many_tools_are_refused(server: Server) -> None:
    many = [
        {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}
        for i in range(MAX_TOOLS + 1)
    ]
    assert _param(_refused(server, tools=many)) == "tools"


def test_schemas_too_large_are_refused(server: Server) -> None:
    props = {f"p{i}": {"type": "string", "description": "x" * 200} for i in range(MAX_TOOLS_BYTES // 200 + 1)}
    big = {
        "type": "function",
        "function": {"name": "big", "parameters": {"type": "object", "properties": props}},
    }
    assert _param(_refused(server, tools=[big])) == "tools"


def test_custom_tools_are_refused(server: Server) -> None:
    custom = {"type": "custom", "custom": {"name": "free"}}
    assert _param(_refused(server, tools=[custom])) == "tools.0.type"


def test_tools_with_response_format_are_refused(server: Server) -> None:
    e = _refused(server, tools=TOOLS, response_format={"type": "json_object"})
    assert _param(e) == "response_format"


def test_tools_with_a_conversation_are_refused(server: Server) -> None:
    e = _refused(server, tools=TOOLS, extra_body={"conversation": "conv-none"})
    assert _param(e) == "tools"


def test_a_tool_result_may_be_empty(server: Server) -> None:
    """A tool that printed nothing is still an answer to its call."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": ""},
    ]
    r = server.client().chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert r.choices[0].message.content is not None
