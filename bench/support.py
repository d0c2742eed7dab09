"""What several benchmarks share: a free port, a server subprocess on loopback, `realm serve` from this
checkout or from another git revision, and a streamed chat request timed token by token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# The story prompt of bench_runtime and bench_portable: long answers, so decode dominates.
STORY_PROMPT = "Write a long story about a dragon who learns to paint."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def server(
    cmd: list[str], ready_url: str, log: Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess that answers `ready_url`; SIGTERM (then SIGKILL) on exit, its output in `log`.
    Yields the process (for its pid: memory figures)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})}
        )
        try:
            wait_ready(ready_url, proc)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def with_pythonpath(first: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` with `first` at the head of PYTHONPATH (ahead of the editable install's path entry)."""
    env = dict(env or {})
    rest = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(first), rest) if p)
    return env


@contextmanager
def realm_serve(
    config: Path,
    log: Path,
    tree: Path = ROOT,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """`realm serve` (as `python -m realm.cli`) of the source tree `tree` on a free loopback port;
    yields its base URL. The same interpreter and environment, only the source differs."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "realm.cli", "serve", "--config", str(config), "--port", str(port), *extra]
    if "--metrics-port" in (tree / "realm" / "cli.py").read_text():
        cmd += ["--metrics-port", "0"]  # two servers at once must not both want the default ops port
    with server(cmd, f"{base}/readyz", log, cwd=tree, env=with_pythonpath(tree, env)):
        yield base


@dataclass(frozen=True)
class Served:
    """A running `realm serve`: its public and ops base URLs and its process."""

    base: str
    ops: str
    proc: subprocess.Popen[bytes]


@contextmanager
def realm_process(config: Path, log: Path, extra: tuple[str, ...] = ()) -> Iterator[Served]:
    """`realm serve` of this checkout on free loopback ports, like `realm_serve`, with its ops listener on
    a known port (its /metrics) and its process (its memory)."""
    port, ops = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "realm.cli", "serve", "--config", str(config), "--port", str(port)]
    cmd += ["--metrics-port", str(ops), *extra]
    with server(cmd, f"{base}/readyz", log, env=with_pythonpath(ROOT)) as proc:
        yield Served(base, f"http://127.0.0.1:{ops}", proc)


@contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """A detached git worktree of `rev` in a temporary folder, removed on exit."""
    parent = Path(tempfile.mkdtemp(prefix="realm-bench-rev-"))
    tree = parent / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(parent, ignore_errors=True)


def exit_on_sigterm() -> None:
    """SIGTERM (what `timeout` sends) raises SystemExit, so that servers are stopped and a temporary
    worktree removed by their context managers instead of being left behind."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def revision_label(rev: str) -> str:
    """`realm@REV` with the short hash, so a report says which code the side ran."""
    short = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    return f"realm@{rev}" if short.startswith(rev) else f"realm@{rev} ({short})"


@dataclass
class StreamResult:
    ttft: float
    tokens: int
    status: int
    first: float = float("nan")  # perf_counter of the first and last content chunks
    last: float = float("nan")


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    key: str,
    model: str,
    max_tokens: int,
    extra: dict[str, object],
    prompt: str = STORY_PROMPT,
) -> StreamResult:
    """POST one streamed chat completion; the time of its first and last content chunks, its tokens."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    t0 = time.perf_counter()
    first = last = float("nan")
    tokens = 0
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            await r.aread()
            return StreamResult(first, 0, r.status_code)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    last = time.perf_counter()
                    first = last if first != first else first
                    tokens += 1
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return StreamResult(first - t0, tokens, 200, first, last)
