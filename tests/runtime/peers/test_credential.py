"""The internal credential: signed under the namespace secret, checked in constant time, bounded."""

from __future__ import annotations

import pytest

from realm.runtime.peers import CredentialError, InternalCredential
from realm.runtime.spec.identity import NamespaceIdentity

IDENTITY = NamespaceIdentity("team-a", "secret-of-team-a")
NOW = 1_000_000.0


def claims(**over: object) -> InternalCredential:
    fields: dict[str, object] = {
        "namespace": "team-a",
        "tenant": "acme",
        "uid": "u-1",
        "model": "gemma",
        "version": "v1",
        "expires": NOW + 30,
        "hops": 1,
    }
    fields.update(over)
    return InternalCredential.model_validate(fields)


def refusal(token: str | None) -> str:
    with pytest.raises(CredentialError) as e:
        InternalCredential.verify(token, IDENTITY, now=NOW)
    return e.value.code


def test_a_signed_credential_verifies_to_its_claims() -> None:
    assert InternalCredential.verify(claims().sign(IDENTITY), IDENTITY, now=NOW) == claims()


def test_a_credential_signed_under_another_secret_is_refused() -> None:
    assert refusal(claims().sign(NamespaceIdentity("team-a", "guessed"))) == "invalid_credential"


def test_changed_claims_break_the_signature() -> None:
    _, mac = claims().sign(IDENTITY).split(".")
    other, _ = claims(tenant="victim").sign(IDENTITY).split(".")
    assert refusal(f"{other}.{mac}") == "invalid_credential"


def test_another_namespaces_credential_is_refused_even_under_its_own_secret() -> None:
    other = NamespaceIdentity("team-b", IDENTITY.secret)
    assert refusal(claims(namespace="team-b").sign(other)) == "invalid_credential"


def test_an_expired_credential_is_refused() -> None:
    assert refusal(claims(expires=NOW - 0.001).sign(IDENTITY)) == "credential_expired"


def test_a_credential_living_past_the_longest_lifetime_is_refused() -> None:
    assert refusal(claims(expires=NOW + 7200).sign(IDENTITY)) == "invalid_credential"


def test_a_call_over_the_hop_limit_is_refused() -> None:
    assert refusal(claims(hops=3).sign(IDENTITY)) == "hop_limit"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "missing_credential"),
        ("", "missing_credential"),
        ("no-dot", "invalid_credential"),
        ("a.b.c", "invalid_credential"),
        ("!!!.00", "invalid_credential"),
        ("x" * 5000 + ".00", "invalid_credential"),
    ],
)
def test_malformed_credentials_are_refused(token: str | None, code: str) -> None:
    assert refusal(token) == code
