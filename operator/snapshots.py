"""The operator's half of `Tenant.spec.kvSnapshots`: expiry, the byte budget, usage, and deletion.

The runtime pods write snapshots (runtime/kvstore/snapshots.py); the operator owns their lifecycle, because
it outlives any pod and sees the Tenant: every sweep expires objects older than `ttlSeconds`, evicts the
oldest beyond `maxBytes`, and reports what is left in the Tenant's status; a Tenant deleted with
`deletionPolicy: Delete` keeps its finalizer until its objects are gone.

Objects live under `<prefix>/<owner key>/` in the bucket, the layout the runtime writes: the owner key is
the Tenant's namespace and uid under the installation secret (runtime/spec/identity.py), so a same-named
Tenant of another namespace, or a Tenant created again under an old name, never reaches these objects. The
same `runtime.kvstore` code lists and deletes them, and it refuses keys outside the owner's folder.
Credentials: the Secret the chart names (`--s3-credentials-secret`, read from the Tenant's namespace),
else boto3's usual chain (the operator pod's environment or role).
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
from realm.runtime.spec.runtime_config import KVSnapshotsConfig
from realm.runtime.spec.tenant import TenantSpec

log = logging.getLogger(__name__)
DEFAULT_PREFIX = KVSnapshotsConfig().prefix


@dataclass(frozen=True)
class SweepResult:
    expired: int
    evicted: int
    objects: int
    bytes: int


def _secret_value(secret: Mapping[str, Any] | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if isinstance(raw, str) else None


def tier_for(k: Kube, namespace: str, spec: TenantSpec, s3: S3Options | None) -> S3Tier | None:
    """The S3 folder of a tenant's snapshots, or None when no bucket is configured (disk-only pods).
    `s3`: the operator's S3 settings (the chart's `s3.*` values)."""
    policy = spec.kv_snapshots
    bucket = policy.bucket or (s3.bucket if s3 else None)
    if not bucket:
        return None
    access = secret = None
    if s3 is not None and s3.credentials_secret:
        creds = k.get("Secret", namespace, s3.credentials_secret)
        access = _secret_value(creds, s3.access_key_id_key)
        secret = _secret_value(creds, s3.secret_access_key_key)
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


__all__ = ["S3Unavailable", "SweepResult", "delete_all", "sweep", "tier_for"]
