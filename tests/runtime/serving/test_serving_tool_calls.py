"""serving/tool_calls.py without a model: the grammar as llguidance matches it (a byte-level tokenizer,
so every text is reachable), the streaming parser, and the prompt's rendering of the history."""

from __future__ import annotations

import json

import llguidance
import pytest

from realm.runtime.serving.errors import InvalidRequest
from realm.runtime.serving.tool_calls import (
    MAX_PARALLEL_CALLS,
    ArgumentsDelta,
    Call,
    CallStart,
    ContentDelta,
    HistoryMessage,
    Tool,
    ToolCallParser,
    ToolChoice,
    call_text,
    parse_answer,
    prompt_messages,
    tool_call_grammar,
)

WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = Tool("get_time", "", {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]})
BYTES = llguidance.LLTokenizer("byte")


def _call(name: str, arguments: str) -> str:
    return call_text([Call("call_x", name, arguments)])


def _matches(grammar: str | None, text: str) -> bool:
    """Whether `text` is a whole answer the grammar accepts."""
    assert grammar is not None
    matcher = llguidance.LLMatcher(BYTES, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    ids = BYTES.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


AUTO = tool_call_grammar([WEATHER, TIME], ToolChoice("auto"), parallel=True)


def test_auto_accepts_plain_text() -> None:
    assert _matches(AUTO, "It is sunny. <tool_call> is only text here.")


def test_auto_accepts_a_valid_call() -> None:
    assert _matches(AUTO, _call("get_weather", '{"city": "Paris"}'))


def test_auto_holds_a_begun_call_to_its_schema() -> None:
    """Once an `auto` answer begins with the tag, arguments off the schema are refused."""
    assert not _matches(AUTO, _call("get_weather", '{"town": "Paris"}'))


def test_auto_refuses_a_call_to_an_unknown_function() -> None:
    assert not _matches(AUTO, _call("rm_rf", '{"city": "Paris"}'))


def test_auto_text_may_leave_the_tag_early() -> None:
    assert _matches(AUTO, "<tool_response> is another tag")


def test_auto_refuses_white_space_before_a_call() -> None:
    """A call after white space would pass as unconstrained text; the grammar refuses that start."""
    assert not _matches(AUTO, "\n" + _call("get_weather", '{"city": "Paris"}'))


def test_required_refuses_plain_text() -> None:
    grammar = tool_call_grammar([WEATHER], ToolChoice("required"), parallel=True)
    assert not _matches(grammar, "It is sunny.")


def test_required_accepts_parallel_calls() -> None:
    grammar = tool_call_grammar([WEATHER, TIME], ToolChoice("required"), parallel=True)
    two = _call("get_weather", '{"city": "Paris"}') + "\n" + _call("get_time", '{"tz": "UTC"}')
    assert _matches(grammar, two)


def test_required_bounds_parallel_calls() -> None:
    grammar = tool_call_grammar([WEATHER], ToolChoice("required"), parallel=True)
    calls = "\n".join([_call("get_weather", '{"city": "Paris"}')] * (MAX_PARALLEL_CALLS + 1))
    assert not _matches(grammar, calls)


def test_parallel_false_allows_one_call() -> None:
    grammar = tool_call_grammar([WEATHER], ToolChoice("required"), parallel=False)
    two = "\n".join([_call("get_weather", '{"city": "Paris"}')] * 2)
    assert not _matches(grammar, two)


def test_named_allows_only_that_function() -> None:
    grammar = tool_call_grammar([WEATHER, TIME], ToolChoice("named", "get_time"), parallel=True)
    assert not _matches(grammar, _call("get_weather", '{"city": "Paris"}'))


def test_none_has_no_grammar() -> None:
    assert tool_call_grammar([WEATHER], ToolChoice("none"), parallel=True) is None


def test_arguments_are_compact() -> None:
    """The layout is json.dumps': the parser and the model see one spelling."""
    grammar = tool_call_grammar([WEATHER], ToolChoice("required"), parallel=True)
    assert not _matches(grammar, _call("get_weather", '{ "city" : "Paris" }'))


# ---- the parser ------------------------------------------------------------------------------------

TRICKY = '{"city": "Pa}ris\\" {[", "n": [1, {"a": 2}]}'


def _fed_by_character(text: str) -> list[object]:
    parser = ToolCallParser()
    events: list[object] = []
    for ch in text:
        events += parser.feed(ch)
    return events + list(parser.finish())


def test_parser_reads_arguments_with_braces_in_strings() -> None:
    content, calls = parse_answer(_call("get_weather", TRICKY))
    assert content is None
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", TRICKY)]


def test_streamed_fragments_of_two_calls_are_never_glued() -> None:
    text = _call("get_weather", TRICKY) + "\n" + _call("get_time", '{"tz": "UTC"}')
    events = _fed_by_character(text)
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ArgumentsDelta):
            args[e.index] = args.get(e.index, "") + e.text
    assert args == {0: TRICKY, 1: '{"tz": "UTC"}'}


def test_a_call_starts_with_its_name_before_any_arguments() -> None:
    events = _fed_by_character(_call("get_weather", '{"city": "Paris"}'))
    kinds = [type(e).__name__ for e in events if not isinstance(e, ContentDelta)]
    assert kinds[0] == "CallStart"
    first = events[0]
    assert isinstance(first, CallStart) and first.name == "get_weather" and first.id.startswith("call_")


def test_text_streams_before_the_answer_ends() -> None:
    parser = ToolCallParser()
    assert parser.feed("Hel") == [ContentDelta("Hel")]


def test_a_tag_prefix_is_held_until_it_is_decided() -> None:
    parser = ToolCallParser()
    assert parser.feed("<tool") == []
    assert parser.feed("_response>") == [ContentDelta("<tool_response>")]


def test_a_call_cut_short_is_not_complete() -> None:
    parser = ToolCallParser()
    parser.feed(_call("get_weather", '{"city": "Paris"}')[:-5])
    parser.finish()
    assert parser.calls and not parser.complete


def test_arguments_cut_short_give_no_call() -> None:
    content, calls = parse_answer('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert content is None and calls == []


# ---- the prompt ------------------------------------------------------------------------------------


def test_tools_join_the_system_message() -> None:
    out = prompt_messages(
        [HistoryMessage("system", "Be brief."), HistoryMessage("user", "Hi")], [WEATHER], ToolChoice("auto")
    )
    assert out[0][0] == "system" and out[0][1].startswith("Be brief.") and '"get_weather"' in out[0][1]
    assert len(out) == 2


def test_tool_results_become_one_user_turn_after_the_calls() -> None:
    calls = (Call("call_a", "get_weather", '{"city": "Paris"}'), Call("call_b", "get_time", '{"tz": "UTC"}'))
    out = prompt_messages(
        [
            HistoryMessage("user", "Hi"),
            HistoryMessage("assistant", "", tool_calls=calls),
            HistoryMessage("tool", "sunny", tool_call_id="call_a"),
            HistoryMessage("tool", "noon", tool_call_id="call_b"),
        ],
        [],
        ToolChoice("none"),
    )
    assert [r for r, _ in out] == ["user", "assistant", "user"]
    assert out[1][1] == call_text(calls)
    responses = [json.loads(block.split("\n")[1]) for block in out[2][1].split("<tool_response>")[1:]]
    assert responses == [{"name": "get_weather", "content": "sunny"}, {"name": "get_time", "content": "noon"}]


def test_a_tool_result_for_no_call_is_refused() -> None:
    with pytest.raises(InvalidRequest) as e:
        prompt_messages([HistoryMessage("tool", "x", tool_call_id="call_zz")], [], ToolChoice("none"))
    assert e.value.param == "messages[0].tool_call_id"
