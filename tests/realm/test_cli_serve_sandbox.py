"""`realm serve` as a process stops on SIGTERM within its grace while a tenant's module sleeps."""

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

DRAIN_S = 3
# Drain, uvicorn's own grace, the sandbox's grace, the KV flush (nothing queued here): seconds
# each. What this tells apart is stopping at all from sleeping out the module's hour.
EXIT_BOUND_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_sigterm_with_a_sleeping_invocation_in_flight_exits_within_the_grace(tmp_path: Path) -> None:
    doc = runtime_config()
    for tenant in doc["tenants"]:  # type: ignore[attr-defined]
        if tenant["name"] == "acme":
            tenant["spec"]["quotas"] = {"wasmTimeMsPerInvocation": 3_600_000}  # its deadline is no help
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
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)

        headers = {"Authorization": f"Bearer {KEYS['acme']}"}
        sleeper = bytes(wasmtime.wat2wasm((WAT / "wasi_sleep.wat").read_text()))  # an hour in poll_oneoff
        assert http.put("/v1/tenants/acme/module", content=sleeper, headers=headers).status_code == 200

        asleep = threading.Event()

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
            except httpx.TransportError:
                pass  # the server went away: what this test wants

        reader = threading.Thread(target=invoke, daemon=True)
        reader.start()
        assert asleep.wait(60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_BOUND_S) == 0
        assert time.monotonic() - started < EXIT_BOUND_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
