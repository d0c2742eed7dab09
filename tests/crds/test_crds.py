"""The committed CRDs are exactly what the generator makes from the pydantic models, and the apiserver
would accept them: structural schemas, documented fields, CEL rules where the spec needs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from repo_paths import REPO

from realm.operator import crdgen
from realm.runtime.spec.tenant import Quotas, TenantSpec

ROOT = REPO
CRD_FILES = [
    "tenants.realm.dev.yaml",
    "models.realm.dev.yaml",
    "modelpools.realm.dev.yaml",
    "pipelines.realm.dev.yaml",
]


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "crds" / name).read_text())
    return doc


def root_schema(doc: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def rules_at(doc: dict[str, Any], path: str) -> list[str]:
    nodes = dict(walk(root_schema(doc)))
    return [r["rule"] for r in nodes[path].get("x-kubernetes-validations", [])]


def test_committed_crds_match_the_generator() -> None:
    generated = crdgen.files()
    assert sorted(generated) == sorted(CRD_FILES)
    for name, text in generated.items():
        assert (ROOT / "crds" / name).read_text() == text, (
            f"{name} drifted: run python -m realm.operator.crdgen"
        )


def test_generation_is_deterministic() -> None:
    assert crdgen.files() == crdgen.files()


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / "models.realm.dev.yaml"
    stale.write_text(stale.read_text().replace("traffic weights must sum to 100", "anything goes"))
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "anything goes" in err


@pytest.mark.parametrize("name", CRD_FILES)
def test_crd_is_structural_and_documented(name: str) -> None:
    doc = load(name)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1" and doc["kind"] == "CustomResourceDefinition"
    for path, node in walk(root_schema(doc)):
        leftovers = {"$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "title", "const"} & set(node)
        assert not leftovers, f"{name}{path}: {leftovers}"
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{name}{path}: no type"
        assert node.get("additionalProperties") is not False, f"{name}{path}: additionalProperties false"
        assert not ("properties" in node and "additionalProperties" in node), f"{name}{path}"
        if node.get("type") == "object" and path != ".metadata":  # the apiserver forbids more there
            assert node.get("description"), f"{name}{path}: no description (kubectl explain)"
        assert node.get("default", 0) is not None, f"{name}{path}: null default"
        if node.get("x-kubernetes-list-type") == "map":
            required = node["items"].get("required", [])
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in required, f"{name}{path}: list-map key {key} must be required"


def test_every_property_has_a_description() -> None:
    for name in CRD_FILES:
        for path, node in walk(root_schema(load(name))):
            for prop, sub in node.get("properties", {}).items():
                if path == "" and prop == "metadata":
                    assert sub == {"type": "object"}, "the apiserver rejects anything else in metadata"
                    continue
                assert sub.get("description"), f"{name}{path}.{prop}"


@pytest.mark.parametrize(
    ("name", "kind", "short"),
    [
        ("tenants.realm.dev.yaml", "Tenant", "tn"),
        ("models.realm.dev.yaml", "Model", "mdl"),
        ("pipelines.realm.dev.yaml", "Pipeline", "pl"),
    ],
)
def test_names_scope_status_and_columns(name: str, kind: str, short: str) -> None:
    doc = load(name)
    spec = doc["spec"]
    assert spec["group"] == "realm.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["realm"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"]["type"] == "date"
    assert columns["Operator"]["jsonPath"] == ".status.operatorVersion"  # -o wide: who wrote the status
    # Every printer column must point at a field the schema defines, or it prints <none> forever.
    nodes = dict(walk(root_schema(doc)))
    for col in columns.values():
        path = col["jsonPath"].split("[", 1)[0]
        if path != ".metadata.creationTimestamp":
            assert path in nodes, f"{kind} column {col['name']} points at unknown {path}"


def test_short_names_do_not_clash_with_builtin_resources() -> None:
    builtin = {"po", "svc", "deploy", "ns", "no", "cm", "pv", "pvc", "sa", "ds", "rs", "sts", "hpa", "cj"}
    builtin |= {"ing", "netpol", "pdb", "pc", "sc", "csr", "crd", "ev", "ep", "limits", "quota", "rc", "cs"}
    builtin |= {"isvc", "ig", "tm"}  # KServe's, the nearest LLM-serving neighbour
    shorts = [s for k in crdgen.KINDS for s in k.short_names]
    assert len(shorts) == len(set(shorts))
    assert not set(shorts) & builtin


def test_model_columns_show_traffic_and_replicas() -> None:
    model_version = load("models.realm.dev.yaml")["spec"]["versions"][0]
    columns = {c["name"]: c["jsonPath"] for c in model_version["additionalPrinterColumns"]}
    assert columns["Versions"] == ".spec.versions[*].name"
    assert columns["Traffic"] == ".status.trafficSummary"
    assert columns["Replicas"] == ".status.readyReplicas"
    tenant_cols = {
        c["name"] for c in load("tenants.realm.dev.yaml")["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert "Models" in tenant_cols


def test_model_cel_rules() -> None:
    doc = load("models.realm.dev.yaml")
    spec_rules = " ".join(rules_at(doc, ".spec"))
    assert "has(self.replicas) && has(self.autoscaling)" in spec_rules
    assert "self.traffic.map(t, t.weight).sum() == 100" in spec_rules
    assert "self.versions.exists(v, v.name == t.version)" in spec_rules
    assert rules_at(doc, ".spec.versions[]") == ["self == oldSelf"]
    nodes = dict(walk(root_schema(doc)))
    versions = nodes[".spec.versions"]
    assert versions["x-kubernetes-list-type"] == "map" and versions["x-kubernetes-list-map-keys"] == ["name"]
    assert versions["maxItems"] <= 8, "CEL cost estimates need bounded lists"
    assert nodes[".spec.traffic"]["x-kubernetes-list-map-keys"] == ["version"]
    assert (
        nodes[".spec.traffic[].weight"]["minimum"] == 0 and nodes[".spec.traffic[].weight"]["maximum"] == 100
    )
    assert nodes[".spec.versions[].engine"]["enum"] == ["trtllm", "llamacpp"]
    assert nodes[".spec.versions[].engine"]["default"] == "llamacpp"
    assert any("metadata.name" in r for r in rules_at(doc, ""))


def test_autoscaling_from_zero_is_refused_by_the_apiserver_with_the_operators_words() -> None:
    from realm.runtime.spec.model import MSG_MIN_REPLICAS

    nodes = dict(walk(root_schema(load("models.realm.dev.yaml"))))
    rules = nodes[".spec.autoscaling"]["x-kubernetes-validations"]
    assert {"rule": "!has(self.minReplicas) || self.minReplicas >= 1", "message": MSG_MIN_REPLICAS} in rules


def test_modelpool_crd() -> None:
    doc = load("modelpools.realm.dev.yaml")
    assert doc["spec"]["names"]["plural"] == "modelpools" and doc["spec"]["names"]["shortNames"] == ["mpool"]
    nodes = dict(walk(root_schema(doc)))
    assert {".spec.resources.gpuMemory", ".spec.replicas", ".spec.autoscaling", ".spec.nodeSelector"} <= set(
        nodes
    )
    assert {".status.members[].footprintBytes", ".status.totalBytes", ".status.capacityBytes"} <= set(nodes)
    assert any("has(self.replicas) && has(self.autoscaling)" in r for r in rules_at(doc, ".spec"))
    columns = {c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Fits", "Usage", "Members"} <= columns


def test_pipeline_cel_rules() -> None:
    doc = load("pipelines.realm.dev.yaml")
    assert any("self.steps.exists(t, t.name == d)" in r for r in rules_at(doc, ".spec"))
    assert any("d == self.name" in r for r in rules_at(doc, ".spec.steps[]"))


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    for name in CRD_FILES:
        nodes = dict(walk(root_schema(load(name))))
        conditions = nodes[".status.conditions"]
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
        assert ".status.observedGeneration" in nodes and ".status.operatorVersion" in nodes


def test_tenant_crd_fields_are_tenant_spec_aliases() -> None:
    # The runtime reads tenants with TenantSpec; a field the CRD knows but the model does not would be
    # pruned or rejected somewhere between kubectl and the runtime.
    def aliases(model: type[Any]) -> set[str]:
        return {f.alias or n for n, f in model.model_fields.items()}

    nodes = dict(walk(root_schema(load("tenants.realm.dev.yaml"))))
    assert set(nodes[".spec"]["properties"]) == aliases(TenantSpec)
    quotas = TenantSpec.model_fields["quotas"].annotation
    assert set(nodes[".spec.quotas"]["properties"]) == aliases(quotas)
    status = nodes[".status"]["properties"]
    assert {"conditions", "observedGeneration", "apiKeySecret", "publishedTo", "kvSnapshotBytes"} <= set(
        status
    )


def test_generator_refuses_unstructural_unions() -> None:
    with pytest.raises(crdgen.CRDGenError, match="anyOf"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "boolean"}], "description": "x"}, {}, ".x")
    with pytest.raises(crdgen.CRDGenError, match="no description"):
        crdgen.structural({"type": "object", "properties": {"a": {"type": "string"}}}, {}, ".x")
    out = crdgen.structural(
        {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "description": "d"}, {}
    )
    assert out == {"type": "integer", "description": "d"}


def test_every_quota_has_an_upper_bound_the_apiserver_enforces() -> None:
    quotas = root_schema(load("tenants.realm.dev.yaml"))["properties"]["spec"]["properties"]["quotas"]
    fields = quotas["properties"]
    assert set(fields) == {f.alias for f in Quotas.model_fields.values()}
    unbounded = sorted(name for name, schema in fields.items() if "maximum" not in schema)
    assert unbounded == []
    assert fields["maxTokensPerRequest"]["maximum"] == 1 << 20


def test_an_absurd_quota_is_refused_with_the_bound_in_the_message() -> None:
    with pytest.raises(ValidationError) as err:
        TenantSpec.model_validate({"quotas": {"maxTokensPerRequest": 1_000_000_000_000}})
    (error,) = err.value.errors()
    assert error["loc"] == ("quotas", "maxTokensPerRequest")
    assert error["type"] == "less_than_equal" and error["ctx"] == {"le": 1 << 20}
