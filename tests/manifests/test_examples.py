"""The example CRs in manifests/examples/ are valid against the same pydantic models the CRDs come from
(the e2e suite applies them to a real apiserver too)."""

from __future__ import annotations

import yaml
from repo_paths import REPO

from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.pipeline import PipelineSpec
from realm.runtime.spec.tenant import TenantSpec

EXAMPLES = REPO / "manifests" / "examples"
SPECS = {"Model": ModelSpec, "Tenant": TenantSpec, "Pipeline": PipelineSpec}


def load() -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_example_parses_with_its_spec_model() -> None:
    docs = load()
    assert sorted(str(d["kind"]) for d in docs) == ["Model", "Pipeline", "Tenant"]
    for doc in docs:
        SPECS[str(doc["kind"])].model_validate(doc["spec"])


def test_examples_show_what_the_docs_promise() -> None:
    by_kind = {str(d["kind"]): d["spec"] for d in load()}
    model = ModelSpec.model_validate(by_kind["Model"])
    assert [(t.version, t.weight) for t in model.traffic] == [("v1", 90), ("v2", 10)]
    assert model.resources.gpu == 1
    tenant = TenantSpec.model_validate(by_kind["Tenant"])
    assert tenant.kv_snapshots.enabled and tenant.quotas.requests_per_minute
    pipeline = PipelineSpec.model_validate(by_kind["Pipeline"])
    assert len(pipeline.steps) == 3 and {s.model for s in pipeline.steps} <= set(tenant.allowed_models)
