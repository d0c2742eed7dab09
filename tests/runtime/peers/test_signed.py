"""Signed pod-to-pod messages (runtime/peers/signed.py): only the namespace's pods can write one, and
a signature is good for its own purpose and bytes only."""

from __future__ import annotations

import pytest

from realm.runtime.peers import CredentialError
from realm.runtime.peers.signed import QUOTA_DEMAND, sign, verify
from realm.runtime.spec.identity import NamespaceIdentity

TEAM_A = NamespaceIdentity("team-a", "secret-of-team-a")
BODY = b'{"pod": "p", "sent": 1.0, "tenants": {}}'


def test_a_signature_of_the_namespace_verifies() -> None:
    verify(TEAM_A, QUOTA_DEMAND, BODY, sign(TEAM_A, QUOTA_DEMAND, BODY))


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        (None, "missing_credential"),
        ("", "missing_credential"),
        ("abc", "invalid_credential"),
        (sign(NamespaceIdentity("team-b", "secret-of-team-b"), QUOTA_DEMAND, BODY), "invalid_credential"),
        (sign(TEAM_A, "another-purpose", BODY), "invalid_credential"),
        (sign(TEAM_A, QUOTA_DEMAND, BODY + b" "), "invalid_credential"),
        ("é" * 64, "invalid_credential"),
    ],
    ids=["none", "empty", "short", "other-namespace", "other-purpose", "other-bytes", "not-hex"],
)
def test_anything_else_is_refused(signature: str | None, code: str) -> None:
    with pytest.raises(CredentialError) as e:
        verify(TEAM_A, QUOTA_DEMAND, BODY, signature)
    assert e.value.code == code
