"""Owner keys: a tenant is its namespace and uid under the installation secret, never its name."""

from __future__ import annotations

import re

from realm.runtime.spec.identity import OWNER_KEY_HEX, NamespaceIdentity, namespace_secret

ROOT = "an-installation-secret"


def test_same_named_tenants_of_two_namespaces_have_different_owner_keys() -> None:
    uid = "same-uid"  # even the same uid (which Kubernetes never repeats) keeps them apart
    a = NamespaceIdentity.of(ROOT, "team-a").owner_key(uid)
    b = NamespaceIdentity.of(ROOT, "team-b").owner_key(uid)
    assert a != b


def test_a_tenant_created_again_gets_a_new_owner_key() -> None:
    ns = NamespaceIdentity.of(ROOT, "team-a")
    assert ns.owner_key("uid-1") != ns.owner_key("uid-2")


def test_another_installation_derives_other_keys() -> None:
    assert NamespaceIdentity.of(ROOT, "team-a").owner_key("u") != NamespaceIdentity.of(
        "other", "team-a"
    ).owner_key("u")


def test_an_owner_key_is_hex_that_names_nothing() -> None:
    key = NamespaceIdentity.of(ROOT, "team-a").owner_key("acme-uid")
    assert re.fullmatch(f"[0-9a-f]{{{OWNER_KEY_HEX}}}", key)


def test_a_namespace_secret_is_not_the_installation_secret_nor_another_namespaces() -> None:
    a, b = namespace_secret(ROOT, "team-a"), namespace_secret(ROOT, "team-b")
    assert ROOT not in (a, b)
    assert a != b


def test_the_repr_never_shows_the_secret() -> None:
    ident = NamespaceIdentity.of(ROOT, "team-a")
    assert ident.secret not in repr(ident)
