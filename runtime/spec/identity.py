"""Who a tenant is for everything stored or cached: its namespace and uid, under a per-installation secret.

A Tenant's name is not an identity: `acme` in namespace `team-a` and `acme` in `team-b` are two tenants, and
`acme` deleted and created again (a new uid) is a third. So every store and cache scope (conversations,
KV snapshots in every tier, the engine's prefix cache, deployed modules, the operator's sweeps and
deletions) is keyed by an *owner key*:

    namespace secret = HMAC-SHA256(installation secret, "realm-namespace" \\0 namespace)
    owner key        = HMAC-SHA256(namespace secret, "realm-tenant" \\0 namespace "/" uid)[:48 hex]

The installation secret is generated once per installation (a Secret in the operator's namespace); each
runtime pod holds only the secret of its own namespace (an environment variable from a Secret, never the
runtime config), so a pod of `team-b` cannot derive `team-a`'s keys, and key names reveal no tenant name.
`realm serve` without a config keeps a local installation secret and the default tenant's uid in its data
folder (runtime/config_store.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: Hex characters of an owner key (192 bits): a valid Kubernetes-style name segment and S3 key segment.
OWNER_KEY_HEX = 48
#: The runtime's environment: its namespace's secret, and the namespace it belongs to.
SECRET_ENV = "REALM_IDENTITY_SECRET"
NAMESPACE_ENV = "REALM_IDENTITY_NAMESPACE"
#: The namespace of tenants configured without one (hand-written configs, `realm serve` alone).
DEFAULT_NAMESPACE = "default"


def _mac(key: str, *parts: str) -> str:
    return hmac.new(key.encode(), "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def namespace_secret(installation_secret: str, namespace: str) -> str:
    """The secret a namespace's runtime pods hold: derived from the installation's, one-way."""
    if not installation_secret:
        raise ValueError("the installation secret is empty")
    return _mac(installation_secret, "realm-namespace", namespace)


def tenant_uid(uid: str | None, name: str) -> str:
    """The uid a tenant is keyed by; a hand-written config without one keys the tenant by its name
    (then a tenant removed and added again is the same tenant, which only a uid can tell apart)."""
    return uid if uid else f"name:{name}"


@dataclass(frozen=True)
class NamespaceIdentity:
    """One namespace's secret, and the keys derived from it. `repr` never shows the secret."""

    namespace: str
    secret: str

    def __repr__(self) -> str:
        return f"NamespaceIdentity(namespace={self.namespace!r})"

    @classmethod
    def of(cls, installation_secret: str, namespace: str) -> NamespaceIdentity:
        return cls(namespace, namespace_secret(installation_secret, namespace))

    @classmethod
    def ephemeral(cls, namespace: str = DEFAULT_NAMESPACE) -> NamespaceIdentity:
        """A secret of this process only: nothing it keys outlives it (tests, a state built bare)."""
        return cls(namespace, secrets.token_hex(32))

    def owner_key(self, uid: str) -> str:
        """The key of the tenant with this uid in this namespace."""
        if not uid:
            raise ValueError("a tenant's owner key needs its uid")
        return _mac(self.secret, "realm-tenant", f"{self.namespace}/{uid}")[:OWNER_KEY_HEX]

    def derive(self, *purpose: str) -> str:
        """A secret for one purpose (a KV salt, a snapshot MAC key), unrelated to any other."""
        return _mac(self.secret, "realm-derived", *purpose)
