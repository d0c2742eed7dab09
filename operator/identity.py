"""The installation secret: generated once, kept in a Secret in the operator's namespace, and the root of
every tenant's owner key (runtime/spec/identity.py).

The operator holds the installation secret; each Model's pods get only their namespace's secret, from the
Model's own `<model>-identity` Secret (builders.identity_secret), created once like an API key Secret and
never rewritten. The runtime config names no secret.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Any

from realm.operator import builders, world
from realm.operator.kube import Kube
from realm.operator.outcome import Outcome
from realm.operator.state import Operator
from realm.runtime.spec.identity import NamespaceIdentity

log = logging.getLogger(__name__)

INSTALLATION_KEY = "installationSecret"


def _decoded(secret: dict[str, Any] | None) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(INSTALLATION_KEY)
    if not isinstance(raw, str):
        return None
    value = base64.b64decode(raw).decode().strip()
    return value or None


def ensure_installation_secret(kube: Kube, namespace: str, name: str) -> str:
    """The installation secret, from Secret `name` in `namespace`, generated there if missing. A replica
    that loses the race to create it reads the winner's."""
    found = _decoded(kube.get("Secret", namespace, name))
    if found is not None:
        return found
    value = secrets.token_hex(32)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "realm-operator"},
        },
        "data": {INSTALLATION_KEY: base64.b64encode(value.encode()).decode()},
    }
    if kube.create(manifest) is not None:
        log.info("generated the installation secret (Secret %s/%s)", namespace, name)
        return value
    found = _decoded(kube.get("Secret", namespace, name))
    if found is None:
        raise RuntimeError(f"Secret {namespace}/{name} exists without a {INSTALLATION_KEY} entry")
    return found


def owner_key(op: Operator, namespace: str, uid: str) -> str:
    """A Tenant's owner key: where its KV snapshots and conversations live."""
    secret = op.config.installation_secret
    if not secret:
        raise RuntimeError("the operator has no installation secret")
    return NamespaceIdentity.of(secret, namespace).owner_key(uid)


def ensure_identity_secret(
    op: Operator, model: builders.ModelResource, opts: builders.BuildOptions, out: Outcome
) -> None:
    """Create the Model's identity Secret once (its pods read their namespace's secret from it)."""
    ensure_secret(op, model.namespace, builders.identity_secret(model, opts), out)


def ensure_secret(op: Operator, namespace: str, manifest: dict[str, Any] | None, out: Outcome) -> None:
    """Create an identity Secret (a Model's or a pool's) once; never rewritten."""
    if manifest is None:
        return
    name = manifest["metadata"]["name"]
    known, _ = world.secret_entry_hash(op.indexes.secrets, namespace, name, builders.IDENTITY_KEY)
    if known or (namespace, name) in op.memory.fresh_secrets:
        return
    created = op.kube.create(manifest)
    if created is not None:
        out.created.append(f"Secret/{name}")
    # Created now or before (a lost race, or the index does not hold it): either way it exists.
    op.memory.fresh_secrets[(namespace, name)] = world.secret_hashes(created or manifest)
