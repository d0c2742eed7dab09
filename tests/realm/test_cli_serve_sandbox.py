"""`realm serve` as a process stops on SIGTERM within its grace while a tenant's module sleeps:
a core module (its WASI sleep is the host's, ended at once) or a component (its WASI 0.2 sleep is
wasmtime's, which nothing interrupts: its caller is answered at the deadline, and the process
exits without waiting for its thread)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import wasmtime
from conftest import KEYS, runtime_config
from repo_paths import WAT
from sandbox_builds import build_napper
from test_cli_serve import wait_until_ready

DRAIN_S = 3
# Drain, uvicorn's own grace, the sandbox's grace, the KV flush (nothing queued here): seconds
# each. What this tells apart is stopping at all from sleeping out the module's hour.
EXIT_BOUND_S = 90


def sleeping_module(kind: str) -> bytes:
    """A module that emits "z" and then sleeps for an hour through WASI."""
    if kind == "core":
        return bytes(wasmtime.wat2wasm((WAT / "wasi_sleep.wat").read_text()))
    return build_napper().read_bytes()  # given no number, it sleeps for an hour


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "deadline_ms"),
    [
        ("core", 3_600_000),  # the deadline is no help: SIGTERM comes while it sleeps
        ("component", 2_000),  # its caller is answered at the deadline, its thread still asleep
    ],
)
def test_sigterm_with_a_sleeping_invocation_in_flight_exits_within_the_grace(
    kind: str, deadline_ms: int, tmp_path: Path
) -> None:
    sleeper = sleeping_module(kind)
    doc = runtime_config()
    for tenant in doc["tenants"]:  # type: ignore[attr-defined]
        if tenant["name"] == "acme":
            tenant["spec"]["quotas"] = {"wasmTimeMsPerInvocation": deadline_ms}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(doc))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "realm.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--drain-timeout",
            str(DRAIN_S),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        http = httpx.Client(base_url=base, timeout=60)
        wait_until_ready(proc, http)

        headers = {"Authorization": f"Bearer {KEYS['acme']}"}
        deployed = http.put("/v1/tenants/acme/module", content=sleeper, headers=headers, timeout=600)
        assert deployed.status_code == 200, deployed.text

        asleep = threading.Event()
        answered: list[str] = []

        def invoke() -> None:
            stream_headers = {**headers, "Accept": "text/event-stream"}
            try:
                with (
                    httpx.Client(base_url=base, timeout=None) as c,
                    c.stream("POST", "/v1/tenants/acme/invoke", json={}, headers=stream_headers) as r,
                ):
                    for line in r.iter_lines():
                        if '"chunk"' in line:
                            asleep.set()  # it emitted "z" and went to sleep
                        elif line.startswith("data: {"):
                            answered.append(line)
            except httpx.TransportError:
                pass  # the server went away: what this test wants

        reader = threading.Thread(target=invoke, daemon=True)
        reader.start()
        assert asleep.wait(60)
        if kind == "component":
            reader.join(60)
            assert len(answered) == 1 and '"code":"wasm_timeout"' in answered[0], answered
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_BOUND_S) == 0
        assert time.monotonic() - started < EXIT_BOUND_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
