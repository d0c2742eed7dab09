"""The operator's half of `Tenant.spec.kvSnapshots`: expiry, the byte budget, usage, and deletion.

The runtime pods write snapshots (runtime/kvstore/snapshots.py); the operator owns their lifecycle, because
it outlives any pod and sees the Tenant: every sweep expires objects older than `ttlSeconds`, evicts the
oldest beyond `maxBytes`, and reports what is left in the Tenant's status; a Tenant deleted with
`deletionPolicy: Delete` keeps its finalizer until its objects are gone.

Objects live under `<prefix>/<owner key>/` in the bucket, the layout the runtime writes: the owner key is
the Tenant's namespace and uid under the installation secret (runtime/spec/identity.py), so a same-named
Tenant of another namespace, or a Tenant created again under an old name, never reaches these objects. The
same `runtime.kvstore` code lists and deletes them, and it refuses keys outside the owner's folder.
Where: a Tenant's `bucket` and `prefix` must lie inside what the platform allows (the chart's
`s3.allowedSnapshotBuckets` and `s3.allowedSnapshotPrefixes`, `location_error`); a Tenant outside them is
refused in its status, never published, and the operator never lists or deletes anything there. A KV
prefix never overlaps the conversations' root.

Credentials: the Secret the chart names (`--s3-credentials-secret`, read from the Tenant's namespace; when
named but missing, nothing is done), else, for the platform's own bucket only, boto3's usual chain (the
operator pod's environment or role). A Tenant's own bucket is never reached with the operator's own
credentials.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from realm.operator.builders import S3Options
from realm.operator.kube import Kube
from realm.runtime.kvstore.s3 import S3Config, S3Tier, S3Unavailable
from realm.runtime.spec.runtime_config import ConversationsConfig, KVSnapshotsConfig, roots_overlap
from realm.runtime.spec.tenant import TenantSpec

log = logging.getLogger(__name__)
DEFAULT_PREFIX = KVSnapshotsConfig().prefix
CONVERSATIONS_PREFIX = ConversationsConfig().prefix  # what the operator publishes (builders.runtime_config)


@dataclass(frozen=True)
class SnapshotLocations:
    """Where Tenants may keep snapshots besides the platform's bucket and prefix (the chart's values)."""

    buckets: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = (DEFAULT_PREFIX,)


def _within(prefix: str, root: str) -> bool:
    parts, base = [p for p in prefix.split("/") if p], [p for p in root.split("/") if p]
    return parts[: len(base)] == base


def location_error(spec: TenantSpec, s3: S3Options | None, allowed: SnapshotLocations) -> str | None:
    """Why a Tenant's `kvSnapshots.bucket`/`prefix` is refused, or None. Checked whatever `enabled` says:
    a refused location is never published, swept nor deleted from."""
    policy = spec.kv_snapshots
    default_bucket = s3.bucket if s3 else None
    own_bucket = policy.bucket is not None and policy.bucket != default_bucket
    if own_bucket and policy.bucket not in allowed.buckets:
        shown = ", ".join([b for b in (default_bucket, *allowed.buckets) if b]) or "none"
        return f"kvSnapshots.bucket {policy.bucket!r} is not one the platform allows (allowed: {shown})"
    if own_bucket and (s3 is None or not s3.credentials_secret):
        return (
            f"kvSnapshots.bucket {policy.bucket!r} needs the platform's S3 credentials Secret "
            "(s3.credentialsSecret): the operator never reaches a Tenant's bucket with its own credentials"
        )
    if policy.prefix is not None:
        if not any(_within(policy.prefix, root) for root in allowed.prefixes):
            shown = ", ".join(allowed.prefixes) or "none"
            return f"kvSnapshots.prefix {policy.prefix!r} is not under a prefix the platform allows ({shown})"
        if not own_bucket and roots_overlap(policy.prefix, CONVERSATIONS_PREFIX):
            return (
                f"kvSnapshots.prefix {policy.prefix!r} overlaps the conversations' root "
                f"{CONVERSATIONS_PREFIX!r}: they never share one"
            )
    return None


@dataclass(frozen=True)
class SweepResult:
    expired: int
    evicted: int
    objects: int
    bytes: int


def _secret_value(secret: Mapping[str, Any] | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if isinstance(raw, str) else None


def credentials(k: Kube, namespace: str, s3: S3Options | None) -> tuple[str | None, str | None]:
    """The access key pair from the credentials Secret the chart names, read from `namespace`; (None,
    None) when none is named (boto3's usual chain). Raises S3Unavailable when it is named but cannot be
    read: never a fallback to the operator's own credentials."""
    if s3 is None or not s3.credentials_secret:
        return None, None
    creds = k.get("Secret", namespace, s3.credentials_secret)
    access = _secret_value(creds, s3.access_key_id_key)
    secret = _secret_value(creds, s3.secret_access_key_key)
    if not access or not secret:
        raise S3Unavailable(
            f"the S3 credentials Secret {s3.credentials_secret} (keys {s3.access_key_id_key}, "
            f"{s3.secret_access_key_key}) is missing in namespace {namespace}"
        )
    return access, secret


def tier_for(
    k: Kube, namespace: str, spec: TenantSpec, s3: S3Options | None, allowed: SnapshotLocations
) -> S3Tier | None:
    """The S3 folder of a tenant's snapshots, or None when no bucket is configured (disk-only pods) or
    its location is refused (`location_error`). `s3`: the operator's S3 settings (the chart's `s3.*`).
    Raises S3Unavailable when the credentials Secret is named but cannot be read: never a fallback to the
    operator's own credentials."""
    policy = spec.kv_snapshots
    bucket = policy.bucket or (s3.bucket if s3 else None)
    if not bucket or location_error(spec, s3, allowed) is not None:
        return None
    access, secret = credentials(k, namespace, s3)
    return S3Tier(
        S3Config(
            bucket=bucket,
            prefix=policy.prefix or DEFAULT_PREFIX,
            endpoint_url=s3.endpoint if s3 else None,
            region=s3.region if s3 else None,
            access_key=access,
            secret_key=secret,
        )
    )


def sweep(tier: S3Tier, owner: str, spec: TenantSpec) -> SweepResult:
    """Expire, evict over budget, then measure what is left, in the folder of `owner` (the Tenant's owner
    key, operator/identity.py). Raises S3Unavailable when S3 is down."""
    policy = spec.kv_snapshots
    expired = len(tier.expire(owner, policy.ttl_seconds)) if policy.ttl_seconds else 0
    evicted = len(tier.enforce_max_bytes(owner, policy.max_bytes)) if policy.max_bytes else 0
    usage = tier.usage(owner)
    return SweepResult(expired, evicted, usage.objects, usage.bytes)


def delete_all(tier: S3Tier, owner: str) -> int:
    return len(tier.delete_tenant(owner))


__all__ = [
    "S3Unavailable",
    "SnapshotLocations",
    "SweepResult",
    "credentials",
    "delete_all",
    "location_error",
    "sweep",
    "tier_for",
]
