"""A Tenant whose egress lists a `*` host is refused in its status, like an invalid spec, unless the
platform allows wildcards (chart value egress.allowWildcard); it is then published to no Model."""

from __future__ import annotations

import copy
from typing import Any

from test_operator_state import NS, Requests, key_secret, tenant

from realm.operator import handlers, tenants, world
from realm.operator.options import OperatorConfig
from realm.runtime.spec.runtime_config import EgressConfig


class FakeKube:
    """The API at the seam the operator calls: a fixed world; status patches recorded."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.status_patches: list[dict[str, Any]] = []

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(kind, [])]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.objects.get(kind, []) if o["metadata"]["name"] == name]
        return copy.deepcopy(found[0]) if found else None

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.status_patches.append(patch)
        return patch


def status_after_a_pass(config: OperatorConfig) -> dict[str, Any]:
    body = tenant("acme", ["chat"])
    body["spec"]["egress"] = {"allowedOutboundHosts": ["https://api.example.com", "*://*:*"]}
    model = {"metadata": {"name": "chat", "namespace": NS}, "status": {}}
    kube = FakeKube({"Tenant": [body], "Secret": [key_secret("acme-api-key", "sk-acme")], "Model": [model]})
    op = handlers.new_operator(kube, config)  # type: ignore[arg-type]
    op.indexes = world.listed(kube, NS)  # type: ignore[arg-type]
    op.tenants, op.passes = Requests(), Requests()  # type: ignore[assignment]
    tenants.reconcile_tenant(op, NS, "acme", body)
    status: dict[str, Any] = kube.status_patches[-1]
    return status


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_wildcard_host_without_the_platforms_allowance_makes_the_tenant_invalid() -> None:
    status = status_after_a_pass(OperatorConfig())
    refused = conditions(status)
    assert status.get("publishedTo", []) == []
    assert refused["ModelsResolved"]["status"] == "False"
    assert refused["ModelsResolved"]["reason"] == "Invalid"
    assert (
        "a `*` host is refused unless the platform sets the chart value egress.allowWildcard"
        in (refused["ModelsResolved"]["message"])
    )


def test_with_the_allowance_the_same_tenant_resolves() -> None:
    status = status_after_a_pass(OperatorConfig(egress=EgressConfig(allow_wildcard=True)))
    assert conditions(status)["ModelsResolved"]["status"] == "True"
    assert status["publishedTo"] == ["chat"]
