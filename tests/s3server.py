"""A real S3 server (MinIO) on loopback for tests and benchmarks, with a fault-injecting proxy in front.

Usage: `with s3_server() as s3:` (this module; tests import it as `import s3server`) starts MinIO, built from
the Go module proxy by `e2e/cluster/build.sh minio` (MINIO_VERSION in e2e/cluster/versions.env), on 127.0.0.1
with a free port, random credentials and a temporary data directory, and returns once it answers (~0.3 s).
`s3.endpoint` goes through a small TCP proxy: set `s3.proxy.mode = "delay"` with `s3.proxy.delay = 0.5`
(each chunk either way waits that long) or `"blackhole"` (connections accepted, never answered) to fake a slow
or partitioned S3; `s3.direct_endpoint` skips the proxy (benchmarks). `s3.access_key`, `s3.secret_key`,
`s3.region`, `s3.client()` (boto3, path-style, on `s3.endpoint`) and `s3.new_bucket()` (a fresh uniquely
named bucket, returned as an `S3Bucket` with endpoint, credentials and name) cover the rest. `s3.stop()`,
`s3.kill()` and `s3.start()` stop and restart the server on the same port and data directory ("S3 is down",
then back with its objects). In pytest, tests/conftest.py has the fixtures `s3_server` (one server per
session: never stop or slow it) and `s3_bucket` (a fresh `S3Bucket` on it per test); a test that stops or
slows the server starts its own with `with s3server.s3_server() as s3:`. Without the binary, the fixtures and
`s3_server()` skip the test saying how to build it; REALM_MINIO_BIN points at another binary, and
REALM_E2E_BUILD=1 builds it on demand (about 2 minutes, once).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "e2e" / "cluster" / "build.sh"
VERSIONS_FILE = REPO / "e2e" / "cluster" / "versions.env"
REGION = "us-east-1"
BUILD_HINT = "run e2e/cluster/build.sh minio (about 5 minutes once), or set REALM_MINIO_BIN"

ProxyMode = Literal["pass", "delay", "blackhole"]


# ---------------------------------------------------------------------------------------------- binary


def _cache_bin_dir() -> Path | None:
    """build.sh's bin directory for the pinned versions; without Go, a cache entry recorded for them."""
    override = os.environ.get("REALM_E2E_BIN_DIR")
    if override:
        return Path(override)
    if shutil.which("go") is not None:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    root = Path(os.environ.get("REALM_E2E_CACHE") or Path.home() / ".cache" / "realm-e2e")
    wanted = VERSIONS_FILE.read_bytes()
    for entry in sorted(root.glob("*/versions.env")):
        if entry.read_bytes() == wanted:
            return entry.parent / "bin"
    return None


def find_minio(build: bool | None = None) -> Path | None:
    """The MinIO binary, or None. `build` (default: REALM_E2E_BUILD=1) runs build.sh when it is missing."""
    override = os.environ.get("REALM_MINIO_BIN")
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    bin_dir = _cache_bin_dir()
    if bin_dir is not None and os.access(bin_dir / "minio", os.X_OK):
        return bin_dir / "minio"
    if build is None:
        build = os.environ.get("REALM_E2E_BUILD") == "1"
    if build and shutil.which("go") is not None:
        subprocess.run(["nice", "bash", str(BUILD_SCRIPT), "minio"], check=False)
        bin_dir = _cache_bin_dir()
        if bin_dir is not None and os.access(bin_dir / "minio", os.X_OK):
            return bin_dir / "minio"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----------------------------------------------------------------------------------------------- proxy


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that forwards to `upstream` ("pass"), delays each chunk (up to 64 KiB, either
    way) by `delay` seconds ("delay"), or accepts connections and never answers ("blackhole").

    The mode is read on every chunk, so switching it affects connections already open: a blackholed
    client waits until its own timeout, which is what a slow or partitioned S3 looks like.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode: ProxyMode = "pass"
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="s3-proxy", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        self._track(client)
        try:
            if self.mode == "blackhole":
                self._swallow(client)
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                return  # server down: the client sees the connection closed, like a refused connect
            upstream.settimeout(None)
            self._track(upstream)
            self._pump(client, upstream)
        except (OSError, ValueError):
            pass  # a peer went away, or close() closed the sockets under us
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
                    with self._lock:
                        self._conns.discard(s)

    def _swallow(self, client: socket.socket) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([client], [], [], 0.2)
            if ready and not client.recv(65536):
                return

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        while not self._closed.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                if self.mode == "blackhole":
                    self._swallow(client)
                    return
                if self.mode == "delay" and self.delay > 0:
                    time.sleep(self.delay)
                peers[src].sendall(data)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()


# ---------------------------------------------------------------------------------------------- server


@dataclass(frozen=True)
class S3Bucket:
    """What a store needs to reach one bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    server: S3Server

    def client(self) -> Any:
        return self.server.client()


class S3Server:
    """One MinIO process; see the module docstring."""

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.access_key = "realm" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = REGION
        self.port = free_port()
        self.proxy = FaultProxy(self.port)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = data_dir.parent / "minio.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    @property
    def direct_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.data_dir.parent),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(self.binary),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{self.port}",
                str(self.data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.direct_endpoint}/minio/health/ready"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    # The health check can pass before the object layer is up ("Server not initialized
                    # yet"): ready means an S3 call succeeds.
                    if resp.status == 200 and self._answers():
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        tail = self._log_path.read_text(errors="replace")[-2000:] if self._log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"MinIO did not become ready on port {self.port}:\n{tail}")

    def _answers(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client(endpoint=self.direct_endpoint, max_attempts=1, read_timeout=2).list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data directory and port stay for start()."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, no shutdown: a crashed server."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def client(self, endpoint: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client with the server's credentials (on the proxy unless `endpoint` is given)."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            connect_timeout=config.pop("connect_timeout", 2),
            read_timeout=config.pop("read_timeout", 10),
            retries={"max_attempts": config.pop("max_attempts", 2), "mode": "standard"},
            s3={"addressing_style": "path"},
            **config,
        )
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=cfg,
        )

    def new_bucket(self, name: str | None = None) -> S3Bucket:
        bucket = name or f"t-{secrets.token_hex(8)}"
        self.client(endpoint=self.direct_endpoint).create_bucket(Bucket=bucket)
        return S3Bucket(self.endpoint, self.access_key, self.secret_key, self.region, bucket, self)

    def close(self) -> None:
        self.stop()
        self.proxy.close()


@contextlib.contextmanager
def s3_server(binary: Path | None = None) -> Iterator[S3Server]:
    """A running MinIO for the duration of the block; skips the calling test when there is no binary."""
    binary = binary or find_minio()
    if binary is None:
        pytest.skip(f"no MinIO binary: {BUILD_HINT}")
    with tempfile.TemporaryDirectory(prefix="realm-s3-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        server = S3Server(binary, data)
        try:
            server.start()
            yield server
        finally:
            server.close()
