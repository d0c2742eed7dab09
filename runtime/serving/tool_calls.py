"""OpenAI tool calling as serving builds it: tools -> a prompt block, tools -> a Lark constraint, model
output -> parsed calls. Pure functions and one incremental parser; the HTTP door parses OpenAI's shapes
into these records and renders what comes back (docs/api.md, "Tool calling").

The model is shown the tools in a Hermes-style system block and answers
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call, separated by a
newline. The chat templates the engine renders (llama.cpp's built-in ones, role and text only) have no
tool format of their own, so this block is the format for every model served.

Validity comes from the constraint, not from hoping: the arguments of every call are an llguidance
`%json` of the tool's own schema, so a call that parses is a call that validates. For `auto` the
grammar itself is the switch: `start: TEXT | calls`, where TEXT cannot begin with `<tool_call>`
(nor with white space), so once the model begins a call the rest of it is held to the schema, and
an answer in plain text is left free.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engines.base import Constraint, Engine
from .constraints import checked_constraint
from .errors import InvalidConstraint, InvalidRequest

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# OpenAI accepts up to 128 tools per request.
MAX_TOOLS = 128
# All the tools' schemas together, as compact JSON: they become one grammar, compiled per request.
MAX_TOOLS_BYTES = 48 * 1024
MAX_TOOL_SCHEMA_DEPTH = 32
# Parallel calls in one answer; a small model left unbounded repeats a call until its budget ends.
MAX_PARALLEL_CALLS = 4
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class Tool:
    """One function tool: its name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None  # the function a named choice forces


@dataclass(frozen=True)
class Call:
    """A tool call: in the history (from the client) or generated (`id` fresh)."""

    id: str
    name: str
    arguments: str  # a JSON object, as text


@dataclass(frozen=True)
class HistoryMessage:
    """A chat message as serving renders it: OpenAI's roles, including `tool` results and assistant
    `tool_calls`."""

    role: str
    content: str
    tool_calls: tuple[Call, ...] = ()
    tool_call_id: str | None = None


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# ---- checking the tools --------------------------------------------------------------------------


def _depth(value: object) -> int:
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest


def checked_tools(engine: Engine, tools: Sequence[Tool], choice: ToolChoice) -> None:
    """Refuse what cannot be offered: too many tools, duplicate names, a schema that is not an object
    schema, too deep or does not compile, all the schemas together too large, a named choice that
    names no tool. Each error's `param` is the field as the client wrote it. Compiles each schema on
    the caller's thread (the engine caches them)."""
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"{len(tools)} tools were given; at most {MAX_TOOLS} are allowed.",
            code="invalid_value",
            param="tools",
        )
    seen: set[str] = set()
    size = 0
    for i, tool in enumerate(tools):
        where = f"tools[{i}].function"
        if not NAME_PATTERN.match(tool.name):
            raise InvalidRequest(
                f"Tool name {tool.name[:80]!r} must be 1 to 64 letters, digits, '_' or '-'.",
                code="invalid_value",
                param=f"{where}.name",
            )
        if tool.name in seen:
            raise InvalidRequest(
                f"Tool name {tool.name!r} is given more than once.",
                code="invalid_value",
                param=f"{where}.name",
            )
        seen.add(tool.name)
        params = tool.parameters
        if params.get("type", "object") != "object":
            raise InvalidConstraint(
                "A function's parameters must be a JSON schema of type 'object'.", param=f"{where}.parameters"
            )
        depth = _depth(params)
        if depth > MAX_TOOL_SCHEMA_DEPTH:
            raise InvalidConstraint(
                f"The parameters schema nests {depth} levels deep; at most {MAX_TOOL_SCHEMA_DEPTH} "
                "are allowed.",
                param=f"{where}.parameters",
            )
        text = _compact(params)
        size += len(text.encode())
        if size > MAX_TOOLS_BYTES:
            raise InvalidConstraint(
                f"The tools' parameter schemas add up to more than {MAX_TOOLS_BYTES} bytes as JSON.",
                param="tools",
            )
        try:
            checked_constraint(engine, Constraint(kind="json_schema", value=text))
        except InvalidConstraint as e:
            raise InvalidConstraint(e.message, param=f"{where}.parameters") from e
    if choice.mode == "named" and choice.name not in seen:
        raise InvalidRequest(
            f"tool_choice names the function {str(choice.name)[:80]!r}, which is not among the tools.",
            code="invalid_value",
            param="tool_choice",
        )
    if choice.mode in ("required", "named") and not tools:
        raise InvalidRequest(
            f"tool_choice {choice.mode!r} needs tools.", code="invalid_value", param="tool_choice"
        )


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ---- the prompt ----------------------------------------------------------------------------------


def tools_block(tools: Sequence[Tool], choice: ToolChoice) -> str:
    """The system prompt text that offers `tools` (Hermes' function-calling prompt, which is also what
    SmolLM2's instruct data used)."""
    offered = [t for t in tools if choice.mode != "named" or t.name == choice.name]
    lines = "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            },
            ensure_ascii=False,
        )
        for t in offered
    )
    must = {
        "auto": "You may call one or more of these functions, or answer directly.",
        "required": "You must call one or more of these functions.",
        "named": f"You must call the function {choice.name}.",
        "none": "",
    }[choice.mode]
    return (
        "You are a function calling AI model. You are provided with function signatures within "
        f"<tools></tools> XML tags. {must}\n<tools>\n{lines}\n</tools>\n"
        "For each function call, return a JSON object with the function name and arguments within "
        f'{CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n{{"name": <function-name>, "arguments": '
        f"<args-json-object>}}\n{CALL_CLOSE}"
    )


def call_text(calls: Iterable[Call]) -> str:
    """Calls as the model writes them."""
    return "\n".join(
        f'{CALL_OPEN}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{CALL_CLOSE}'
        for c in calls
    )


def prompt_messages(
    messages: Sequence[HistoryMessage], tools: Sequence[Tool], choice: ToolChoice
) -> list[tuple[str, str]]:
    """The (role, text) pairs the chat template renders: the tools block joined to the system message
    (or a system message of its own, first), assistant calls as the model writes them, and each run of
    tool results as one user turn of `<tool_response>` blocks (templates such as Gemma's require user and
    assistant turns to alternate). A tool result whose `tool_call_id` answers no earlier call is refused."""
    out: list[tuple[str, str]] = []
    block = tools_block(tools, choice) if tools and choice.mode != "none" else None
    called: dict[str, str] = {}
    pending: list[str] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            name = called.get(m.tool_call_id or "")
            if name is None:
                raise InvalidRequest(
                    f"The tool message's tool_call_id {str(m.tool_call_id)[:80]!r} answers no tool call "
                    "of an earlier assistant message.",
                    code="invalid_value",
                    param=f"messages[{i}].tool_call_id",
                )
            pending.append(
                "<tool_response>\n"
                + json.dumps({"name": name, "content": m.content}, ensure_ascii=False)
                + "\n</tool_response>"
            )
            continue
        if pending:
            out.append(("user", "\n".join(pending)))
            pending = []
        if m.role == "assistant" and m.tool_calls:
            for c in m.tool_calls:
                called[c.id] = c.name
            text = call_text(m.tool_calls)
            out.append(("assistant", f"{m.content}\n{text}" if m.content else text))
        else:
            out.append((m.role, m.content))
    if pending:
        out.append(("user", "\n".join(pending)))
    if block is not None:
        if out and out[0][0] in ("system", "developer"):
            out[0] = (out[0][0], f"{out[0][1]}\n\n{block}")
        else:
            out.insert(0, ("system", block))
    return out


# ---- the constraint ------------------------------------------------------------------------------


def _not_a_call_regex() -> str:
    """Text that does not begin with white space or `<tool_call>`, as a Rust regex (no lookahead): the
    empty text, text whose first character is neither, text that leaves the tag at its k-th character,
    or a proper prefix of the tag alone."""
    tag = CALL_OPEN
    any_rest = r"[\s\S]*"
    alternatives = [r"[^<\s]" + any_rest]
    for k in range(1, len(tag)):
        alternatives.append(f"{tag[:k]}[^{tag[k]}]{any_rest}")
        alternatives.append(tag[:k])
    return "(" + "|".join(alternatives) + ")?"


def tool_call_grammar(tools: Sequence[Tool], choice: ToolChoice, *, parallel: bool) -> str | None:
    """The Lark grammar (llguidance's dialect) an answer is held to; None for `none` or no tools.

    `required`: one call or more (one when not `parallel`); named: exactly one call of that function;
    `auto`: plain text, or calls as for `required`. Each call's JSON is an llguidance `%json` whose
    `anyOf` has one branch per tool (llguidance wants `anyOf`, not alternative rules, for several
    `%json`), with `name` first so a stream can name the call before its arguments."""
    if not tools or choice.mode == "none":
        return None
    offered = [t for t in tools if choice.mode != "named" or t.name == choice.name]
    schema = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": dict(t.parameters) or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in offered
        ],
        # Compact, as json.dumps writes it: a small model fills free white space with newlines.
        "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    }
    more = MAX_PARALLEL_CALLS - 1 if parallel and choice.mode != "named" else 0
    calls = f'calls: call ("\\n" call){{0,{more}}}' if more else "calls: call"
    rules = [
        "start: TEXT | calls" if choice.mode == "auto" else "start: calls",
        calls,
        f'call: "{CALL_OPEN}\\n" body "\\n{CALL_CLOSE}"',
        f"body: %json {_compact(schema)}",
    ]
    if choice.mode == "auto":
        rules.append(f"TEXT: /{_not_a_call_regex()}/")
    return "\n".join(rules) + "\n"


def tool_call_constraint(
    engine: Engine, tools: Sequence[Tool], choice: ToolChoice, *, parallel: bool
) -> Constraint | None:
    """`tool_call_grammar` as the engine's constraint, compiled once to check it (param `tools`)."""
    grammar = tool_call_grammar(tools, choice, parallel=parallel)
    if grammar is None:
        return None
    try:
        return checked_constraint(engine, Constraint(kind="lark", value=grammar))
    except InvalidConstraint as e:
        raise InvalidConstraint(e.message, param="tools") from e


# ---- reading the answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    """A call's first delta: its index among this answer's calls, id and function name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


@dataclass(frozen=True)
class CallEnd:
    index: int


ToolEvent = ContentDelta | CallStart | ArgumentsDelta | CallEnd

_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


@dataclass
class ToolCallParser:
    """Reads an answer as it streams: plain text, or `<tool_call>` blocks.

    It yields content as soon as the answer is known to be text (its first character is not `<`, or the
    text leaves the tag), a call's start once its name is complete, and its arguments as they arrive —
    exactly the argument object's characters (a JSON depth scanner tells where it ends), so the fragments
    of one call join into its arguments and never into the next call's. Under the grammar of
    `tool_call_grammar` the answer always has this shape; text outside it is taken as content."""

    _buf: str = ""
    _mode: Literal["undecided", "text", "calls"] = "undecided"
    _state: Literal["open", "head", "args", "close"] = "open"
    _calls: list[Call] = field(default_factory=list)
    _id: str = ""
    _name: str = ""
    _args: list[str] = field(default_factory=list)
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    content: list[str] = field(default_factory=list)

    @property
    def calls(self) -> list[Call]:
        """The calls read to their end."""
        return list(self._calls)

    @property
    def is_calls(self) -> bool:
        return self._mode == "calls"

    def feed(self, text: str) -> list[ToolEvent]:
        self._buf += text
        events: list[ToolEvent] = []
        if self._mode == "undecided":
            if CALL_OPEN.startswith(self._buf):
                return events  # still possibly a call's tag
            self._mode = "calls" if self._buf.startswith(CALL_OPEN) else "text"
        if self._mode == "text":
            out, self._buf = self._buf, ""
            if out:
                self.content.append(out)
                events.append(ContentDelta(out))
            return events
        while self._step(events):
            pass
        return events

    def _step(self, events: list[ToolEvent]) -> bool:
        """Advance through the buffer; False once it needs more text."""
        if self._state == "open":
            stripped = self._buf.lstrip()
            if len(stripped) < len(CALL_OPEN):
                return False
            if not stripped.startswith(CALL_OPEN):
                return False  # not a call: left in the buffer, seen by finish()
            self._buf = stripped[len(CALL_OPEN) :]
            self._state = "head"
            return True
        if self._state == "head":
            m = _CALL_HEAD.match(self._buf)
            if m is None or m.end() == len(self._buf):
                return False  # the name, or what follows it, is not complete yet
            self._id, self._name = new_call_id(), m.group(1)
            self._buf = self._buf[m.end() :]
            self._args, self._depth, self._in_string, self._escaped = [], 0, False, False
            self._state = "args"
            events.append(CallStart(len(self._calls), self._id, self._name))
            return True
        if self._state == "args":
            if not self._buf:
                return False
            end = self._scan(self._buf)
            piece = self._buf if end is None else self._buf[:end]
            self._buf = "" if end is None else self._buf[end:]
            if piece:
                self._args.append(piece)
                events.append(ArgumentsDelta(len(self._calls), piece))
            if end is None:
                return False
            self._calls.append(Call(self._id, self._name, "".join(self._args)))
            events.append(CallEnd(len(self._calls) - 1))
            self._state = "close"
            return True
        # close: the call object's `}`, then the closing tag
        at = self._buf.find(CALL_CLOSE)
        if at < 0:
            return False
        self._buf = self._buf[at + len(CALL_CLOSE) :]
        self._state = "open"
        return True

    def _scan(self, text: str) -> int | None:
        """Where the argument object ends in `text` (the index after its closing brace), tracking depth
        across calls; None if it goes on."""
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None

    def finish(self) -> list[ToolEvent]:
        """The end of the answer: a tag prefix never completed is text after all."""
        if self._mode == "undecided" and self._buf:
            self._mode = "text"
            out, self._buf = self._buf, ""
            self.content.append(out)
            return [ContentDelta(out)]
        return []

    @property
    def complete(self) -> bool:
        """Whether every call begun was read to its closing tag."""
        return self._mode != "calls" or (self._state == "open" and not self._buf.strip())


def parse_answer(text: str) -> tuple[str | None, list[Call]]:
    """A whole answer: its content (None when it is calls) and the calls read to their end."""
    parser = ToolCallParser()
    parser.feed(text)
    parser.finish()
    if parser.is_calls:
        return None, parser.calls
    return "".join(parser.content), []
