"""The OpenAI-compatible API against the real engine, through the official `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import MODEL, Server


def test_chat_completion_non_streaming(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_greedy_is_deterministic(server: Server) -> None:
    client = server.client()
    texts = {
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_chat_streaming_with_usage(server: Server) -> None:
    chunks = list(
        server.client().chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Count to five."},
            ],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and usage.usage.completion_tokens > 0


def test_chat_stream_without_usage_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json=body, headers=server.headers())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)


def test_chat_logprobs(server: Server) -> None:
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_completion_from_text_and_from_token_ids(server: Server) -> None:
    client = server.client()
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens > 0
    ids = server.runtime.state.engines[MODEL].encode("The capital of France is")
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert r2.choices[0].text == r.choices[0].text
    assert r2.usage is not None and r2.usage.prompt_tokens == len(ids)


def test_completion_streaming_and_logprobs(server: Server) -> None:
    client = server.client()
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == len(lp.token_logprobs or [])


def test_stop_sequence_ends_completion(server: Server) -> None:
    r = server.client().completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[","]
    )
    assert r.choices[0].finish_reason == "stop"
    assert "," not in r.choices[0].text


def test_logit_bias_and_ignore_eos(server: Server) -> None:
    """Both keep a chat that would stop at once going until max_tokens."""
    client = server.client()
    ask = [{"role": "user", "content": "Say only: yes"}]
    short = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert short.choices[0].finish_reason == "stop"
    # A chat that would stop at once keeps going with ignore_eos and length as the reason.
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 24
    eos = 2  # SmolLM2's <|im_end|>
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        logit_bias={str(eos): -100, "0": -100},
    )
    assert r.choices[0].finish_reason == "length"


def test_models_lists_only_what_the_tenant_may_use(server: Server) -> None:
    assert [m.id for m in server.client("acme").models.list()] == [MODEL]
    # gemma-only may use a model this runtime does not serve: it sees nothing it could call.
    assert [m.id for m in server.client("gemma-only").models.list()] == []


def test_health_readiness_openapi_metrics(server: Server) -> None:
    assert server.runtime.metrics_url is not None
    with server.http() as http, httpx.Client(base_url=server.runtime.metrics_url, timeout=60) as ops:
        for client in (http, ops):
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["models"] == [MODEL]
        spec = ops.get("/openapi.json").json()
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
        assert "/metrics" not in spec["paths"]
        server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        text = ops.get("/metrics").text
    for name in (
        "realm_requests_total",
        "realm_prompt_tokens_total",
        "realm_completion_tokens_total",
        "realm_time_to_first_token_seconds_bucket",
        "realm_queue_wait_seconds_bucket",
        "realm_kv_cache_usage_ratio",
        "realm_kv_cache_used_tokens",
        "realm_running_requests",
        "realm_queued_requests",
    ):
        assert name in text, name
    assert (
        f'realm_requests_total{{endpoint="completions",model="{MODEL}",outcome="success",tenant="acme"}}'
        in text
    )


def test_metrics_and_the_openapi_document_are_not_on_the_public_port(server: Server) -> None:
    with server.http() as http:
        for path in ("/metrics", "/openapi.json", "/docs"):
            r = http.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "not_found"


def test_requests_per_minute_quota_gives_429_with_retry_after(server: Server) -> None:
    client = server.client("ratelimited")
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    response: httpx.Response = info.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "requests_per_minute"
    assert server.runtime.metrics_url is not None
    metrics = httpx.get(server.runtime.metrics_url + "/metrics").text
    assert (
        'realm_quota_rejections_total{model="smollm2-135m-instruct",reason="requests_per_minute",' in metrics
    )
