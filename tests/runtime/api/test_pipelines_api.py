"""POST /v1/pipelines/{name}/runs against the session's real runtime (tests/conftest.py's `diamond`)."""

from __future__ import annotations

import json

from conftest import Server


def test_a_run_returns_the_output_step_and_every_steps_record(server: Server) -> None:
    with server.http() as http:
        r = http.post("/v1/pipelines/diamond/runs", json={"input": {"text": "go"}}, headers=server.headers())
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["object"] == "pipeline.run"
    assert run["phase"] == "Succeeded"
    assert [run["steps"][n]["phase"] for n in "abc"] == ["Succeeded"] * 3
    assert run["output"] == run["steps"]["c"]["output"]
    assert run["usage"]["completion_tokens"] == sum(
        run["steps"][n]["usage"]["completion_tokens"] for n in "abc"
    )


def test_a_streamed_run_sends_the_output_steps_text_then_the_run(server: Server) -> None:
    body = {"input": {"text": "go"}, "stream": True}
    with server.http() as http:
        r = http.post("/v1/pipelines/diamond/runs", json=body, headers=server.headers())
    assert r.status_code == 200, r.text
    lines = [x[len("data: ") :] for x in r.text.split("\n\n") if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    deltas = "".join(c["delta"] for c in chunks if c["object"] == "pipeline.run.delta")
    assert chunks[-1]["object"] == "pipeline.run"
    assert deltas == chunks[-1]["output"]


def test_another_tenants_pipeline_and_a_missing_one_answer_the_same_404(server: Server) -> None:
    with server.http() as http:
        theirs = http.post(
            "/v1/pipelines/diamond/runs", json={"input": {}}, headers=server.headers("limited")
        )
        missing = http.post("/v1/pipelines/nope/runs", json={"input": {}}, headers=server.headers())
    assert theirs.status_code == 404
    assert missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "pipeline_not_found"


def test_hostile_bodies_are_4xx(server: Server) -> None:
    with server.http() as http:
        huge = http.post(
            "/v1/pipelines/diamond/runs", json={"input": {"text": "x" * 300_000}}, headers=server.headers()
        )
        wrong = http.post("/v1/pipelines/diamond/runs", json={"input": "text"}, headers=server.headers())
        anon = http.post("/v1/pipelines/diamond/runs", json={"input": {}})
    assert huge.status_code == 400
    assert huge.json()["error"]["code"] == "input_too_large"
    assert wrong.status_code == 400
    assert anon.status_code == 401
