"""Key Secrets: the operator watches only those labelled `realm.dev/tenant`, and a Secret serves only the
Tenant its label names. A Tenant naming an unlabelled Secret, or another Tenant's, gets a False ApiKeyReady
condition saying so, and no key of it is published."""

from __future__ import annotations

import copy
from typing import Any

import kopf
from test_operator_state import NS, key_secret, tenant

from realm.operator import handlers, tenants, world
from realm.operator.options import OperatorConfig
from realm.operator.outcome import Outcome
from realm.operator.reconcile import SECRET_NOT_FOUND, SECRET_NOT_LABELLED, SECRET_OF_ANOTHER_TENANT
from realm.operator.state import MEMO_KEY
from realm.runtime.spec.runtime_config import hash_api_key
from realm.runtime.spec.tenant import TenantSpec


class FakeKube:
    """The API at the seam the operator calls: lists with what a label selector would keep, gets by name."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(kind, [])]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.objects.get(kind, []) if o["metadata"]["name"] == name]
        return copy.deepcopy(found[0]) if found else None

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        raise AssertionError("no Secret is created for a Tenant that names its own")


def own(name: str, secret: str) -> dict[str, Any]:
    body = tenant(name, ["chat"])
    body["spec"]["apiKeySecretRef"] = {"name": secret, "key": "apiKey"}
    return body


def key_of(objects: dict[str, list[dict[str, Any]]], body: dict[str, Any]) -> tuple[str | None, str]:
    kube = FakeKube(objects)
    op = handlers.new_operator(kube, OperatorConfig())  # type: ignore[arg-type]
    op.indexes = world.listed(kube, NS)  # type: ignore[arg-type]
    state = tenants.ensure_key(op, body, TenantSpec.model_validate(body["spec"]), Outcome())
    return state.reason, state.message


def test_an_unlabelled_secret_is_not_read_and_the_condition_says_how_to_label_it() -> None:
    unlabelled = key_secret("acme-keys", "sk-acme")
    del unlabelled["metadata"]["labels"]
    objects = {"Secret": [unlabelled]}
    reason, message = key_of(objects, own("acme", "acme-keys"))
    assert reason == SECRET_NOT_LABELLED
    assert "kubectl label secret acme-keys realm.dev/tenant=acme" in message
    assert world.listed(FakeKube(objects), NS).secrets == {}  # type: ignore[arg-type]
    assert key_of({}, own("acme", "acme-keys"))[0] == SECRET_NOT_FOUND


def test_a_secret_labelled_for_another_tenant_is_refused_and_its_key_not_published() -> None:
    objects = {
        "Tenant": [own("acme", "shared"), own("intruder", "shared")],
        "Secret": [key_secret("shared", "sk-acme", owner="acme")],
    }
    reason, message = key_of(objects, own("intruder", "shared"))
    assert reason == SECRET_OF_ANOTHER_TENANT
    assert "Tenant acme's key" in message
    assert key_of(objects, own("acme", "shared")) == (None, "")
    views = world.tenant_views(world.listed(FakeKube(objects), NS), NS)  # type: ignore[arg-type]
    assert {v.name: v.api_key_sha256 for v in views} == {"acme": hash_api_key("sk-acme"), "intruder": None}


def test_another_tenants_managed_secret_is_refused() -> None:
    objects = {"Secret": [key_secret("acme-api-key", "sk-acme")]}
    assert key_of(objects, own("intruder", "acme-api-key"))[0] == SECRET_OF_ANOTHER_TENANT


def test_secrets_are_watched_through_a_label_selector() -> None:
    """The apiserver filters the watch: the operator never receives the namespace's other Secrets."""
    settings = kopf.OperatorSettings()
    op = handlers.new_operator(FakeKube({}), OperatorConfig())  # type: ignore[arg-type]
    indexes: dict[str, Any] = {n: {} for n in handlers.INDEX_NAMES}
    handlers.startup(settings=settings, memo=kopf.Memo({MEMO_KEY: op}), **indexes)
    secrets = kopf.Resource("", "v1", "secrets", kind="Secret", namespaced=True)
    assert settings.watching.label_selectors.collect(secrets) == ["realm.dev/tenant"]
    tenants_resource = kopf.Resource("realm.dev", "v1alpha1", "tenants", kind="Tenant", namespaced=True)
    assert settings.watching.label_selectors.collect(tenants_resource) == []
