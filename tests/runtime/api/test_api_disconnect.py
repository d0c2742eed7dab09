"""A client that goes away mid-stream has its sequence cancelled; everyone else is served on."""

from __future__ import annotations

import time

from conftest import MODEL, Server


def _running(server: Server) -> int:
    return server.runtime.state.engines[MODEL].stats().running


def _wait_until(predicate: object, limit_s: float = 30.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def _counter(server: Server, outcome: str) -> float:
    value = server.runtime.metrics.registry.get_sample_value(
        "realm_requests_total",
        {"tenant": "acme", "model": MODEL, "endpoint": "completions", "outcome": outcome},
    )
    return value or 0.0


def test_disconnect_mid_stream_cancels_the_sequence(server: Server) -> None:
    cancelled_before = _counter(server, "cancelled")
    body = {
        "model": MODEL,
        # Greedy counting never reaches EOS on its own: only the disconnect can end it early.
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with (
        server.http() as http,
        http.stream("POST", "/v1/completions", json=body, headers=server.headers()) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        received = 0
        for line in lines:
            if line.startswith("data: {"):
                received += 1
                if received == 3:
                    break
        assert _running(server) == 1  # the sequence is in the engine while we read
    # The connection is closed now; the engine must drop the sequence and free its KV.
    assert _wait_until(lambda: _running(server) == 0)
    assert _wait_until(lambda: _counter(server, "cancelled") == cancelled_before + 1)
    assert _wait_until(lambda: server.runtime.state.engines[MODEL].stats().kv_used_tokens == 0)
    # And the server goes on serving.
    r2 = server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    assert r2.choices[0].finish_reason in ("stop", "length")


def test_disconnect_of_one_stream_leaves_another_running(server: Server) -> None:
    body = {"model": MODEL, "prompt": "List the numbers from one to fifty:", "max_tokens": 40, "stream": True}
    with (
        server.http() as other_http,
        other_http.stream(
            "POST", "/v1/completions", json={**body, "temperature": 0}, headers=server.headers()
        ) as keep,
    ):
        with (
            server.http() as http,
            http.stream(
                "POST", "/v1/completions", json={**body, "max_tokens": 1500}, headers=server.headers()
            ) as drop,
        ):
            next(line for line in drop.iter_lines() if line.startswith("data: {"))
        events = [line for line in keep.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"' in events[-2]
    assert _wait_until(lambda: _running(server) == 0)
