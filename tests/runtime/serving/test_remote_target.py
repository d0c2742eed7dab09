"""The caller's side of a cross-pod call without a model: which version a reference names, the
credential a call carries, and what the picker remembers of its peers. Discovery is a fake at its seam."""

from __future__ import annotations

import time

from realm.runtime.metrics import Metrics
from realm.runtime.peers import Endpoint, InternalCredential, StaticDiscovery
from realm.runtime.peers.credential import MAX_LIFETIME_S
from realm.runtime.serving.remote import InternalGenerateBody, RemoteGenerations, RemoteStream, remote_target
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.identity import NamespaceIdentity
from realm.runtime.spec.runtime_config import ClusterConfig, ClusterModel, TenantEntry

CLUSTER = ClusterConfig(
    namespace="team-a",
    models=[
        ClusterModel(name="gemma", version="v1", weight=90, service="gemma-v1"),
        ClusterModel(name="gemma", version="v2", weight=10, service="gemma-v2"),
        ClusterModel(name="smol", version="v1", weight=100, service="smol-v1"),
    ],
)
IDENTITY = NamespaceIdentity("team-a", "s3cret")


def test_a_bare_name_names_the_version_with_the_highest_weight() -> None:
    target = remote_target(CLUSTER, "gemma")
    assert target is not None and (target.version, target.service) == ("v1", "gemma-v1")


def test_a_version_in_the_reference_names_that_version() -> None:
    target = remote_target(CLUSTER, "gemma@v2")
    assert target is not None and target.service == "gemma-v2"


def test_a_version_or_model_the_cluster_does_not_place_names_nothing() -> None:
    assert (
        remote_target(CLUSTER, "gemma@v9"),
        remote_target(CLUSTER, "llama"),
        remote_target(None, "gemma"),
    ) == (
        None,
        None,
        None,
    )


def stream(deadline_s: float, discovery: StaticDiscovery | None = None) -> RemoteStream:
    remote = RemoteGenerations(CLUSTER, discovery or StaticDiscovery(), IDENTITY)
    return RemoteStream(
        ServingState(models={}, metrics=Metrics()),
        remote,
        tenant=TenantEntry(name="acme", namespace="team-a", uid="u-1"),
        target=CLUSTER.models[0],
        body=InternalGenerateBody(model="gemma", version="v1", prompt="hi"),
        deadline_s=deadline_s,
        hops=1,
        endpoint="wasm",
        id_prefix="wasm",
    )


def test_a_deadline_longer_than_a_credential_may_live_is_cut_to_it() -> None:
    """An invocation may run an hour or more; its credential must still be one the receiver accepts."""
    credential = InternalCredential.verify(stream(7200.0)._credential(), IDENTITY)
    assert (credential.tenant, credential.uid, credential.hops) == ("acme", "u-1", 1)
    assert credential.expires <= time.time() + MAX_LIFETIME_S


def test_the_reports_of_pods_that_left_the_service_are_dropped() -> None:
    a, b = Endpoint("10.0.0.1", 8081, "a"), Endpoint("10.0.0.2", 8081, "b")
    discovery = StaticDiscovery({"gemma-v1": [a, b]})
    remote = stream(60.0, discovery).remote
    remote.pick(CLUSTER.models[0], "k", set())
    remote.reported[("gemma-v1", a)] = remote.reported[("gemma-v1", b)] = 3
    discovery.table["gemma-v1"] = [b]
    remote.pick(CLUSTER.models[0], "k", set())
    assert remote.reported == {("gemma-v1", b): 3}
