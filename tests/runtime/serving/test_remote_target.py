"""The caller's side of a cross-pod call without a model: which cluster entry a chosen version calls, the
credential a call carries, and what the picker remembers of its peers. Discovery is a fake at its seam."""

from __future__ import annotations

import time

from realm.runtime.metrics import Metrics
from realm.runtime.peers import Endpoint, InternalCredential, StaticDiscovery
from realm.runtime.peers.credential import MAX_LIFETIME_S
from realm.runtime.serving.remote import InternalGenerateBody, RemoteGenerations, RemoteStream, remote_for
from realm.runtime.serving.routing import ModelTarget
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


def state_with_remote() -> ServingState:
    state = ServingState(models={}, metrics=Metrics())
    state.remote = RemoteGenerations(CLUSTER, StaticDiscovery(), IDENTITY)
    return state


def test_a_version_another_pod_serves_names_its_service() -> None:
    entry = remote_for(state_with_remote(), ModelTarget("gemma", "v2"))
    assert entry is not None and entry.service == "gemma-v2"


def test_a_version_or_model_the_cluster_does_not_place_names_nothing() -> None:
    state = state_with_remote()
    assert (remote_for(state, ModelTarget("gemma", "v9")), remote_for(state, ModelTarget("llama", "v1"))) == (
        None,
        None,
    )


def test_outside_a_cluster_nothing_is_remote() -> None:
    assert remote_for(ServingState(models={}, metrics=Metrics()), ModelTarget("gemma", "v1")) is None


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
