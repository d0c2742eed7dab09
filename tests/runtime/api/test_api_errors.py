"""Bad input of every kind gets a 4xx in OpenAI's error shape: never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import MODEL, Server

from realm.runtime.api.errors import invocation_error
from realm.runtime.sandbox import InvocationFailed
from realm.runtime.sandbox.abi import InvocationErrorCode

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def _chat(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **overrides}


@pytest.fixture
def http(server: Server) -> httpx.Client:
    return server.http()


def test_missing_and_wrong_api_key_are_401(server: Server, http: httpx.Client) -> None:
    _error(http.post(CHAT, json=_chat()), 401, "missing_api_key")
    _error(http.post(CHAT, json=_chat(), headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    _error(http.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)


def test_malformed_json_is_400(server: Server, http: httpx.Client) -> None:
    r = http.post(
        CHAT, content=b'{"model": ', headers={**server.headers(), "content-type": "application/json"}
    )
    _error(r, 400, "invalid_json")


def test_invalid_utf8_body_is_400(server: Server, http: httpx.Client) -> None:
    body = b'{"model": "\xff\xfe", "messages": []}'
    r = http.post(CHAT, content=body, headers={**server.headers(), "content-type": "application/json"})
    _error(r, 400, "invalid_json")


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_tokens": "many"},
        {"messages": "hello"},
        {"temperature": 5},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stream": "sometimes"},
    ],
)
def test_wrong_types_and_ranges_are_400(
    server: Server, http: httpx.Client, overrides: dict[str, Any]
) -> None:
    _error(http.post(CHAT, json=_chat(**overrides), headers=server.headers()), 400)


def test_unknown_model_is_404_and_forbidden_model_is_403(server: Server, http: httpx.Client) -> None:
    _error(
        http.post(CHAT, json=_chat(model="no-such-model"), headers=server.headers()), 404, "model_not_found"
    )
    r = http.post(CHAT, json=_chat(), headers=server.headers("gemma-only"))
    assert _error(r, 403, "model_not_allowed")["param"] == "model"


def test_empty_messages_empty_content_and_bad_role_are_400(server: Server, http: httpx.Client) -> None:
    for messages in (
        [],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "   "}],
        [{"role": "wizard", "content": "Hi"}],
        [{"role": "tool", "content": "Hi"}],
        [{"content": "Hi"}],
    ):
        _error(http.post(CHAT, json=_chat(messages=messages), headers=server.headers()), 400)


def test_max_tokens_zero_negative_or_beyond_context_is_400(server: Server, http: httpx.Client) -> None:
    for value in (0, -1):
        _error(http.post(CHAT, json=_chat(max_tokens=value), headers=server.headers()), 400)
    context = server.runtime.state.engines[MODEL].info.context_length
    r = http.post(
        COMPLETIONS,
        json={"model": MODEL, "prompt": "Hi", "max_tokens": context + 1},
        headers=server.headers(),
    )
    assert _error(r, 400)["param"] == "max_tokens"


def test_prompt_longer_than_context_is_context_length_exceeded(server: Server, http: httpx.Client) -> None:
    context = server.runtime.state.engines[MODEL].info.context_length
    body = {"model": MODEL, "prompt": [100] * (context + 10), "max_tokens": 4}
    _error(http.post(COMPLETIONS, json=body, headers=server.headers()), 400, "context_length_exceeded")
    long_text = "word " * (context + 10)
    r = http.post(
        CHAT, json=_chat(messages=[{"role": "user", "content": long_text}]), headers=server.headers()
    )
    _error(r, 400, "context_length_exceeded")


def test_tenant_prompt_and_max_tokens_limits(server: Server, http: httpx.Client) -> None:
    h = server.headers("limited")  # maxTokensPerRequest 8, maxPromptTokens 40
    _error(http.post(CHAT, json=_chat(max_tokens=9), headers=h), 400, "max_tokens_exceeded")
    _error(http.post(CHAT, json=_chat(max_completion_tokens=9, max_tokens=None), headers=h), 400)
    long_prompt = {"model": MODEL, "prompt": "one two three " * 20, "max_tokens": 4}
    _error(http.post(COMPLETIONS, json=long_prompt, headers=h), 400, "context_length_exceeded")
    ok = http.post(CHAT, json=_chat(max_tokens=8), headers=h)
    assert ok.status_code == 200
    # Without max_tokens, the tenant's cap is the default rather than an error.
    r = http.post(CHAT, json=_chat(max_tokens=None), headers=h)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8


@pytest.mark.parametrize(
    ("path", "overrides"),
    [
        (CHAT, {"n": 2}),
        (CHAT, {"tools": [{"type": "custom", "custom": {"name": "f"}}]}),  # function tools: test_tool_calls
        (CHAT, {"response_format": {"type": "yaml"}}),
        (CHAT, {"logit_bias": {"100": 500}}),
        (CHAT, {"logit_bias": {"not-a-token": 5}}),
        (CHAT, {"logit_bias": {"99999999": 5}}),
        (CHAT, {"logit_bias": {"99999999999999999999": 5}}),  # past int64 (found by fuzzing: was a 500)
        (CHAT, {"surprise": 1}),
        (CHAT, {"stream_options": {"include_usage": True}}),
        (COMPLETIONS, {"echo": True}),
        (COMPLETIONS, {"n": 3}),
        (COMPLETIONS, {"prompt": ["a", "b"]}),
        (COMPLETIONS, {"prompt": [10**9]}),
        (COMPLETIONS, {"prompt": ""}),
    ],
)
def test_unsupported_options_are_400(
    server: Server, http: httpx.Client, path: str, overrides: dict[str, Any]
) -> None:
    body = (
        _chat(**overrides) if path == CHAT else {"model": MODEL, "prompt": "Hi", "max_tokens": 4, **overrides}
    )
    _error(http.post(path, json=body, headers=server.headers()), 400)


def test_harmless_openai_fields_are_accepted(server: Server, http: httpx.Client) -> None:
    body = _chat(user="u-1", metadata={"k": "v"}, store=False, n=1, seed=7, parallel_tool_calls=False)
    assert http.post(CHAT, json=body, headers=server.headers()).status_code == 200


def test_oversized_body_is_413(server: Server, http: httpx.Client) -> None:
    body = b'{"model": "x", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    r = http.post(COMPLETIONS, content=body, headers={**server.headers(), "content-type": "application/json"})
    _error(r, 413, "request_too_large")


def test_unknown_path_and_method_keep_openai_shape(server: Server, http: httpx.Client) -> None:
    _error(http.get("/v1/nothing-here", headers=server.headers()), 404)
    _error(http.get(CHAT, headers=server.headers()), 405)


@pytest.mark.parametrize(
    ("path", "overrides"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "\ud800"}]}),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}]}),
        (COMPLETIONS, {"prompt": "\udfff\ud800"}),
    ],
)
def test_a_lone_surrogate_is_400(
    server: Server, http: httpx.Client, path: str, overrides: dict[str, Any]
) -> None:
    """JSON's \\ud800 escape parses to a string no UTF-8 can carry: refused, not a 500 when encoded."""
    body = (
        _chat(**overrides) if path == CHAT else {"model": MODEL, "prompt": "Hi", "max_tokens": 4, **overrides}
    )
    headers = {**server.headers(), "content-type": "application/json"}
    _error(http.post(path, content=json.dumps(body), headers=headers), 400, "invalid_value")


def test_the_sandboxs_own_busy_refusal_is_a_503_with_retry_after() -> None:
    busy = invocation_error(InvocationFailed(InvocationErrorCode.BUSY, "components asleep"))
    assert (busy.status, busy.type, busy.code, busy.headers()) == (
        503,
        "service_unavailable",
        "wasm_busy",
        {"Retry-After": "1"},
    )
