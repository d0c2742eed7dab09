"""A Tenant's kvSnapshots.bucket/prefix must lie inside what the platform allows; the operator never reaches
a Tenant's bucket with its own credentials."""

from __future__ import annotations

from typing import Any

import pytest

from realm.operator.builders import S3Options
from realm.operator.kube import Kube
from realm.operator.snapshots import S3Unavailable, SnapshotLocations, location_error, tier_for
from realm.runtime.spec.tenant import TenantSpec

PLATFORM = S3Options(bucket="platform", credentials_secret="realm-s3")
ALLOWED = SnapshotLocations(buckets=("team-bucket",), prefixes=("realm/kv", "tenants"))


def spec(**kv: Any) -> TenantSpec:
    return TenantSpec.model_validate({"kvSnapshots": {"enabled": True, **kv}})


def test_the_platform_bucket_and_an_allowed_prefix_are_accepted() -> None:
    assert location_error(spec(), PLATFORM, ALLOWED) is None
    assert location_error(spec(prefix="realm/kv/acme"), PLATFORM, ALLOWED) is None
    assert location_error(spec(bucket="team-bucket", prefix="tenants/x"), PLATFORM, ALLOWED) is None


def test_a_bucket_the_platform_does_not_allow_is_refused() -> None:
    error = location_error(spec(bucket="someone-elses"), PLATFORM, ALLOWED)
    assert error == (
        "kvSnapshots.bucket 'someone-elses' is not one the platform allows (allowed: platform, team-bucket)"
    )


def test_a_prefix_outside_the_allowed_ones_is_refused() -> None:
    error = location_error(spec(prefix="realm/conversations/x"), PLATFORM, ALLOWED)
    assert error == (
        "kvSnapshots.prefix 'realm/conversations/x' is not under a prefix the platform allows "
        "(realm/kv, tenants)"
    )


def test_a_prefix_over_the_conversations_root_is_refused_even_if_allowed() -> None:
    error = location_error(spec(prefix="realm"), PLATFORM, SnapshotLocations(prefixes=("realm",)))
    assert error is not None and "overlaps the conversations' root" in error


def test_a_tenants_own_bucket_without_the_platforms_credentials_is_refused() -> None:
    error = location_error(spec(bucket="team-bucket"), S3Options(bucket="platform"), ALLOWED)
    assert error is not None and "never reaches a Tenant's bucket with its own credentials" in error


class NoSecrets:
    """A seam for Kube.get: the credentials Secret does not exist in the Tenant's namespace."""

    def get(self, kind: str, namespace: str, name: str) -> None:
        return None


def test_a_missing_credentials_secret_is_an_error_not_the_operators_own_credentials() -> None:
    kube: Kube = NoSecrets()  # type: ignore[assignment]
    with pytest.raises(S3Unavailable, match=r"realm-s3 .* is missing in namespace team-a"):
        tier_for(kube, "team-a", spec(), PLATFORM, ALLOWED)


def test_a_refused_location_is_never_listed() -> None:
    kube: Kube = NoSecrets()  # type: ignore[assignment]
    assert tier_for(kube, "team-a", spec(bucket="someone-elses"), PLATFORM, ALLOWED) is None
