"""POST /v1/pipelines/{name}/runs against the session's real runtime (tests/conftest.py's `diamond`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from conftest import KEYS, Server, runtime_config
from runtime_thread import running


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


def test_a_background_run_answers_at_once_and_is_read_until_it_ends(server: Server) -> None:
    body = {"input": {"text": "go"}, "background": True}
    with server.http() as http:
        r = http.post("/v1/pipelines/diamond/runs", json=body, headers=server.headers())
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["phase"] in ("Pending", "Running")
        assert r.headers["X-Realm-Run-Id"] == started["id"]
        url = f"/v1/pipelines/diamond/runs/{started['id']}"
        for _ in range(600):
            run = http.get(url, headers=server.headers()).json()
            if run["phase"] not in ("Pending", "Running"):
                break
            time.sleep(0.05)
        assert run["phase"] == "Succeeded"
        assert run["output"] == run["steps"]["c"]["output"]
        assert [run["steps"][n]["attempts"] for n in "abc"] == [1, 1, 1]
        # Another tenant, another pipeline's path, and a made-up id all read as the same 404.
        theirs = http.get(url, headers=server.headers("limited"))
        elsewhere = http.get(f"/v1/pipelines/slow/runs/{started['id']}", headers=server.headers())
        made_up = http.get("/v1/pipelines/diamond/runs/run-0", headers=server.headers())
    for missing in (theirs, elsewhere, made_up):
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] in ("run_not_found", "pipeline_not_found")
    assert elsewhere.json()["error"]["code"] == made_up.json()["error"]["code"] == "run_not_found"


def test_delete_cancels_a_running_run_and_its_steps(server: Server) -> None:
    with server.http() as http:
        r = http.post(
            "/v1/pipelines/slow/runs",
            json={"input": {"text": "1 2 3"}, "background": True},
            headers=server.headers(),
        )
        run_id = r.json()["id"]
        url = f"/v1/pipelines/slow/runs/{run_id}"
        for _ in range(600):  # until the step is generating
            if http.get(url, headers=server.headers()).json()["steps"]["count"]["phase"] == "Running":
                break
            time.sleep(0.05)
        # Another tenant cannot cancel it.
        assert http.delete(url, headers=server.headers("limited")).status_code == 404
        cancelled = http.delete(url, headers=server.headers())
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["phase"] == "Cancelled"
        assert cancelled.json()["steps"]["count"]["phase"] == "Cancelled"
        assert http.get(url, headers=server.headers()).json()["phase"] == "Cancelled"


def test_a_synchronous_run_names_its_id_in_a_header(server: Server) -> None:
    with server.http() as http:
        r = http.post("/v1/pipelines/diamond/runs", json={"input": {"text": "go"}}, headers=server.headers())
    assert r.headers["X-Realm-Run-Id"] == r.json()["id"]


def test_stream_and_background_together_are_refused(server: Server) -> None:
    body = {"input": {}, "stream": True, "background": True}
    with server.http() as http:
        r = http.post("/v1/pipelines/diamond/runs", json=body, headers=server.headers())
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream"


def test_a_stopping_runtime_ends_its_background_runs_within_the_drain(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(runtime_config()))
    with running(path, drain_timeout=0.5) as rt:
        r = httpx.post(
            f"{rt.base_url}/v1/pipelines/slow/runs",
            json={"input": {"text": "1 2 3"}, "background": True},
            headers={"Authorization": f"Bearer {KEYS['acme']}"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        run = rt.state.pipeline_runs.get(r.json()["id"])
        assert run is not None
        # Stopped once its step generates: a step still waiting for admission is refused by the drain
        # (503, the run Failed), which is not what this test is about.
        engine = next(iter(rt.state.engines.values()))
        for _ in range(1200):
            if engine.stats().running:
                break
            time.sleep(0.05)
        assert engine.stats().running == 1
    # The drain gave it half a second, then cancelled it: its record ended, no step left running.
    assert (run.phase, run.steps["count"].phase) == ("Cancelled", "Cancelled")
    assert run.task is not None and run.task.done()
