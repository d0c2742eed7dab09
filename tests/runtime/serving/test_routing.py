"""A model reference resolved to a version (runtime/serving/routing.py): explicit versions, weights from
the cluster or the local versions, stickiness by route key, the tenant's allow-list, hostile references."""

from __future__ import annotations

from collections import Counter

import pytest

from realm.runtime.serving.errors import InvalidRequest, ModelNotAllowed, ModelNotFound, Unavailable
from realm.runtime.serving.routing import ModelTarget, resolve_target
from realm.runtime.spec.runtime_config import ClusterConfig, ClusterModel, TenantEntry
from realm.runtime.spec.tenant import TenantSpec

TENANT = TenantEntry(name="acme", spec=TenantSpec(allowed_models=["chat", "other"]))
LOCAL: dict[ModelTarget, int | None] = {ModelTarget("chat", "v1"): None, ModelTarget("chat", "v2"): None}


def cluster(*entries: tuple[str, str, int]) -> ClusterConfig:
    return ClusterConfig(
        namespace="ns",
        models=[ClusterModel(name=n, version=v, weight=w, service=f"{n}-{v}") for n, v, w in entries],
    )


def resolve(
    reference: str,
    route_key: str | None = None,
    *,
    loaded: dict[ModelTarget, int | None] = LOCAL,
    in_cluster: ClusterConfig | None = None,
    tenant: TenantEntry = TENANT,
) -> ModelTarget:
    return resolve_target(reference, tenant=tenant, route_key=route_key, loaded=loaded, cluster=in_cluster)


def test_a_version_named_is_the_version_reached() -> None:
    assert resolve("chat@v2", "any-key") == ModelTarget("chat", "v2")


def test_an_unknown_version_is_not_found_and_named() -> None:
    with pytest.raises(ModelNotFound, match="no version 'v9'"):
        resolve("chat@v9")


def test_an_unknown_model_is_not_found() -> None:
    with pytest.raises(ModelNotFound, match="'nope' does not exist"):
        resolve("nope")


def test_the_allow_list_applies_to_the_name_of_any_version() -> None:
    outsider = TenantEntry(name="x", spec=TenantSpec(allowed_models=["other"]))
    with pytest.raises(ModelNotAllowed):
        resolve("chat@v2", tenant=outsider)


@pytest.mark.parametrize(
    "reference",
    [
        "chat@",
        "@v1",
        "chat@v1@v2",
        "Chat",
        "chat@V1",
        "chat v1",
        "chat@v1/x",
        "../chat",
        "c" * 97,
        "chat\x00",
    ],
)
def test_a_hostile_reference_is_invalid(reference: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve(reference)


def test_the_cluster_weights_split_bare_names() -> None:
    weights = cluster(("chat", "v1", 90), ("chat", "v2", 10))
    picks = Counter(resolve("chat", f"user-{i}", in_cluster=weights).version for i in range(10_000))
    # 10,000 hashed keys: the v2 share's standard deviation is 0.3 points.
    assert 850 <= picks["v2"] <= 1150


def test_the_same_key_always_reaches_the_same_version() -> None:
    weights = cluster(("chat", "v1", 50), ("chat", "v2", 50))
    picks = {k: resolve("chat", k, in_cluster=weights) for k in map(str, range(200))}
    assert all(resolve("chat", k, in_cluster=weights) == t for k, t in picks.items())


def test_keys_spread_over_the_versions() -> None:
    weights = cluster(("chat", "v1", 50), ("chat", "v2", 50))
    assert {resolve("chat", str(k), in_cluster=weights).version for k in range(200)} == {"v1", "v2"}


def test_without_a_key_each_request_draws_afresh() -> None:
    weights = cluster(("chat", "v1", 50), ("chat", "v2", 50))
    assert {resolve("chat", None, in_cluster=weights).version for _ in range(200)} == {"v1", "v2"}


def test_a_version_at_weight_zero_gets_no_bare_requests_but_answers_by_name() -> None:
    weights = cluster(("chat", "v1", 100), ("chat", "v2", 0))
    assert {resolve("chat", str(k), in_cluster=weights).version for k in range(200)} == {"v1"}
    assert resolve("chat@v2", in_cluster=weights) == ModelTarget("chat", "v2")


def test_a_version_only_in_the_cluster_is_a_target() -> None:
    weights = cluster(("chat", "v1", 0), ("chat", "v3", 100))
    assert resolve("chat", "k", in_cluster=weights) == ModelTarget("chat", "v3")


def test_a_model_whose_versions_all_weigh_zero_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        resolve("chat", "k", in_cluster=cluster(("chat", "v1", 0), ("chat", "v2", 0)))


def test_without_cluster_weights_the_local_weights_split() -> None:
    local: dict[ModelTarget, int | None] = {ModelTarget("chat", "v1"): 100, ModelTarget("chat", "v2"): 0}
    assert {resolve("chat", str(k), loaded=local).version for k in range(100)} == {"v1"}


def test_without_any_weights_the_local_versions_share_equally() -> None:
    picks = Counter(resolve("chat", str(k)).version for k in range(10_000))
    assert 4700 <= picks["v2"] <= 5300


def test_a_cluster_not_listing_the_model_leaves_it_to_the_local_versions() -> None:
    weights = cluster(("other", "v1", 100))
    local: dict[ModelTarget, int | None] = {ModelTarget("chat", "v1"): 0, ModelTarget("chat", "v2"): 100}
    assert resolve("chat", "k", loaded=local, in_cluster=weights) == ModelTarget("chat", "v2")
