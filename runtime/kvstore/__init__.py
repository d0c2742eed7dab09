"""KV-cache snapshots, keyed by token prefix, in memory, on local disk and in S3 (issue #6).

    store = KVSnapshotStore(KVStoreConfig(disk_dir=..., s3=S3Config(bucket=..., prefix="realm/kv")))
    scope = Scope(namespace=tenant, salt=tenant_salt, model=..., model_version=..., model_digest=...,
                  engine_fingerprint=engine_kv_fingerprint)
    # None on any miss, within the deadline:
    snapshot = await store.fetch([scope, shared_scope], prompt_ids, deadline=deadline_in(0.2))
    store.put(scope, final_event.kv)  # returns at once; disk and S3 writes happen in the background

Modules: `keys` (scopes and chain hashes), `codec` (object layout, verification, compression policy),
`memory` / `disk` / `s3` (the tiers), `store` (lookup, promotion, background uploads, tenant policy),
`stats` (counters for metrics), `snapshots` (the runtime's wiring: per-tenant scopes and policy, the
prefix cache's key hint; imported by name, as it needs the engine and spec types).
"""

from .codec import CompressionPolicy, SnapshotHeader, SnapshotRejected
from .keys import (
    DEFAULT_BLOCK_SIZE,
    FORMAT_VERSION,
    SHARED_NAMESPACE,
    InvalidScopeError,
    Scope,
    block_hashes,
    snapshot_hash,
)
from .s3 import S3Config, S3Unavailable, Usage
from .stats import KVStoreStats
from .store import Hit, KVSnapshotStore, KVStoreConfig, deadline_in

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FORMAT_VERSION",
    "SHARED_NAMESPACE",
    "CompressionPolicy",
    "Hit",
    "InvalidScopeError",
    "KVSnapshotStore",
    "KVStoreConfig",
    "KVStoreStats",
    "S3Config",
    "S3Unavailable",
    "Scope",
    "SnapshotHeader",
    "SnapshotRejected",
    "Usage",
    "block_hashes",
    "deadline_in",
    "snapshot_hash",
]
