"""`realm serve` as a process: readiness, the printed curl line, and a SIGTERM drain."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import KEYS, MODEL, runtime_config
from repo_paths import REPO

from realm.cli import _curl_line, _metrics_port, _parser
from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import RuntimeConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_ready(proc: subprocess.Popen[str], http: httpx.Client) -> None:
    """Poll /readyz of the `realm serve` subprocess until it answers 200 (its output if it dies first)."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.2)


def test_serve_arguments_and_defaults() -> None:
    args = _parser().parse_args(["serve"])
    assert (args.config, args.host, args.port, args.drain_timeout) == (None, "127.0.0.1", 8000, 30.0)
    args = _parser().parse_args(["serve", "--config", "c.yaml", "--port", "9", "--drain-timeout", "5"])
    assert (args.config, args.port, args.drain_timeout) == (Path("c.yaml"), 9, 5.0)


def test_metrics_port_flag_overrides_the_config() -> None:
    assert _metrics_port(_parser().parse_args(["serve"]).metrics_port) == "config"
    assert _metrics_port(_parser().parse_args(["serve", "--metrics-port", "9191"]).metrics_port) == 9191
    assert _metrics_port(_parser().parse_args(["serve", "--metrics-port", "-1"]).metrics_port) is None
    config = RuntimeConfig.model_validate({"server": {"metricsPort": 9393}})
    assert Runtime(config).metrics_port == 9393
    assert Runtime(config, metrics_port=None).metrics_port is None


def test_curl_line_is_a_valid_shell_command_with_the_key() -> None:
    line = _curl_line("http://127.0.0.1:8000", MODEL, "realm-abc")
    argv = shlex.split(line)
    assert argv[0] == "curl" and "Authorization: Bearer realm-abc" in argv
    assert json.loads(argv[argv.index("-d") + 1])["model"] == MODEL


@pytest.mark.slow
def test_sigterm_drains_in_flight_stream_then_exits_zero(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(runtime_config()))
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
            str(_free_port()),
            "--drain-timeout",
            "600",
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
        body = {
            "model": MODEL,
            "prompt": "1, 2, 3, 4, 5, 6,",
            "max_tokens": 300,
            "temperature": 0,
            "stream": True,
        }
        events: list[str] = []
        first = threading.Event()

        def stream() -> None:
            with (
                httpx.Client(base_url=base, timeout=120) as c,
                c.stream("POST", "/v1/completions", json=body, headers=headers) as r,
            ):
                for line in r.iter_lines():
                    if line:
                        events.append(line)
                        first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)

        # While the stream runs: not ready, and new work is refused with a retryable 503.
        refused: httpx.Response | None = None
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            try:
                r = httpx.post(
                    f"{base}/v1/completions",
                    json={**body, "stream": False, "max_tokens": 2},
                    headers=headers,
                    timeout=30,
                )
            except httpx.TransportError:
                break  # only acceptable once the in-flight stream has finished (checked below)
            if r.status_code == 503:
                refused = r
        if refused is not None:
            assert refused.json()["error"]["type"] == "service_unavailable"
        else:
            assert "data: [DONE]" in events

        reader.join(300)
        assert events[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in events[-2] or '"finish_reason":"stop"' in events[-2]
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_realm_tenant_build_go(tmp_path: Path) -> None:
    """`realm tenant build` packages the Go echo example; a folder with no source fails clearly."""
    root = REPO
    out = tmp_path / "echo.wasm"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "realm.cli",
            "tenant",
            "build",
            str(root / "sdk/go/examples/echo"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\0asm"
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run(
        [sys.executable, "-m", "realm.cli", "tenant", "build", str(empty), "-o", str(tmp_path / "x.wasm")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "realm tenant build:" in failed.stderr
