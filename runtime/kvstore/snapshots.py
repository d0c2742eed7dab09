"""Tenant policy over the KV snapshot store: which scopes a request may read, where its KV is kept.

Two stores, because two promises differ:
- the prefix cache, in process memory only, for every tenant: a prompt that starts with a sequence this
  pod already computed for the same tenant (an earlier turn, a long system prompt) restores its KV
  instead of prefilling it;
- the persistent tiers (memory, local disk, S3), for tenants whose `spec.kvSnapshots.enabled` is set:
  their snapshots survive the pod and are found by any replica.

Scopes are per tenant *owner*, never per name: the owner key (the Tenant's namespace and uid under the
installation secret, runtime/spec/identity.py) is the namespace (the objects' folder), and a salt derived
from it and the runtime's secret keys the hash chain, so identical prompts of two tenants never share a
key, and a Tenant of the same name in another namespace, or created again, finds nothing. A Tenant with
`sharePrefixCache` also writes into, and reads from, a shared scope (in process memory only) whose salt
every sharing tenant of this runtime knows (opting in means accepting that others can time its cached
prefixes).

The engine never sees any of this: a request carries the snapshot to restore and asks for its KV back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

from realm.runtime.engines.base import KV_FINGERPRINT, MODEL_DIGEST, KVSnapshot, ModelInfo
from realm.runtime.kvstore import (
    SHARED_NAMESPACE,
    InvalidScopeError,
    KVSnapshotStore,
    KVStoreConfig,
    KVStoreStats,
    S3Config,
    Scope,
    deadline_in,
)
from realm.runtime.spec.runtime_config import KVSnapshotsConfig
from realm.runtime.spec.tenant import TenantSpec

log = logging.getLogger(__name__)

Listener = Callable[[str, str], None]


def _salt(secret: str, material: str) -> str:
    # Keyed by the runtime's secret: a chain hash cannot be computed, hence not probed, without it.
    return hmac.new(secret.encode(), f"realm-kv-salt\0{material}".encode(), hashlib.sha256).hexdigest()


def kv_key_hint(key: str | None) -> tuple[str | None, int | None]:
    """A conversation's recorded `kv_key` is `<object key>#<tokens>`: the tokens tell the next lookup
    where the previous turn's snapshot ends (it may lie further back than the store would probe)."""
    if not key:
        return None, None
    obj, _, tokens = key.rpartition("#")
    return (obj, int(tokens)) if obj and tokens.isdigit() else (key, None)


class KVSnapshots:
    def __init__(
        self, config: KVSnapshotsConfig, home: Path, *, secret: str, listener: Listener | None = None
    ) -> None:
        """`secret`: the runtime's KV secret (derived from its identity secret), which salts every scope."""
        if not secret:
            raise ValueError("KV snapshots need a non-empty secret")
        self.config = config
        self._secret = secret
        stats = KVStoreStats(listener)
        self.prefix_cache: KVSnapshotStore | None = None
        if config.prefix_cache and config.memory_bytes > 0:
            self.prefix_cache = KVSnapshotStore(
                KVStoreConfig(memory_bytes=config.memory_bytes // 2, partial_prefixes=True), stats
            )
        self.bucket = os.environ.get("REALM_S3_BUCKET") or config.bucket
        self.endpoint = os.environ.get("REALM_S3_ENDPOINT") or config.endpoint
        self.region = os.environ.get("REALM_S3_REGION") or config.region
        self.disk = Path(config.disk_dir) if config.disk_dir else home / "kv"
        self.stats = stats
        self._scopes: dict[tuple[str, bool, str, str, str | None], list[Scope]] = {}
        self._memory = config.memory_bytes - (config.memory_bytes // 2 if self.prefix_cache else 0)
        # One store per (bucket, prefix) a Tenant names; the runtime's own is made up front.
        self._stores: dict[tuple[str | None, str], KVSnapshotStore] = {}
        self.persistent = self._store(self.bucket, config.prefix)

    def _store(self, bucket: str | None, prefix: str) -> KVSnapshotStore:
        key = (bucket, prefix)
        store = self._stores.get(key)
        if store is None:
            default = not self._stores
            s3 = None
            if bucket:
                s3 = S3Config(bucket=bucket, prefix=prefix, endpoint_url=self.endpoint, region=self.region)
            folder = self.disk if default else self.disk / hashlib.sha256(repr(key).encode()).hexdigest()[:16]
            store = KVSnapshotStore(
                KVStoreConfig(
                    mac_key=hmac.new(self._secret.encode(), b"realm-kv-mac", hashlib.sha256).digest(),
                    memory_bytes=self._memory if default else self._memory // 8,
                    disk_dir=folder if self.config.disk_bytes > 0 else None,
                    disk_bytes=self.config.disk_bytes,
                    s3=s3,
                ),
                self.stats,
            )
            self._stores[key] = store
        return store

    def store_for(self, spec: TenantSpec | None) -> KVSnapshotStore:
        """The persistent store of a tenant: its own bucket and prefix when it names them."""
        if spec is None:
            return self.persistent
        policy = spec.kv_snapshots
        return self._store(policy.bucket or self.bucket, policy.prefix or self.config.prefix)

    # Scopes ------------------------------------------------------------------------------------------

    @staticmethod
    def _scope(namespace: str, salt: str, info: ModelInfo) -> Scope | None:
        fingerprint = info.metadata.get(KV_FINGERPRINT)
        digest = info.metadata.get(MODEL_DIGEST)
        if not fingerprint or not digest:
            return None  # an engine that cannot export and restore KV
        try:
            return Scope(
                namespace=namespace,
                salt=salt,
                model=info.name,
                model_version=info.version,
                model_digest=digest,
                engine_fingerprint=fingerprint,
            )
        except InvalidScopeError as e:
            log.warning("no KV snapshots for %s/%s: %s", namespace, info.name, e)
            return None

    def scopes(self, owner: str, spec: TenantSpec | None, info: ModelInfo) -> list[Scope]:
        """Where this tenant's requests may find KV: its own scope first, then the shared one. `owner`:
        the tenant's owner key (ServingState.owner), never its name."""
        shared = spec is not None and spec.kv_snapshots.share_prefix_cache
        key = (owner, shared, info.name, info.version, info.metadata.get(KV_FINGERPRINT))
        # Every request asks three times (restore, export?, keep); a scope hashes its whole identity.
        found = self._scopes.get(key)
        if found is None:
            # The namespace is always the owner key: a Tenant's prefix moves its folder, never into
            # another tenant's (usage, expiry and deletion work per namespace).
            own = self._scope(owner, _salt(self._secret, f"tenant\0{owner}"), info)
            found = [own] if own is not None else []
            if shared:
                common = self._scope(SHARED_NAMESPACE, _salt(self._secret, "shared"), info)
                if common is not None:
                    found.append(common)
            if len(self._scopes) > 4096:  # tenants come and go: never grow without bound
                self._scopes.clear()
            self._scopes[key] = found
        return list(found)

    def persistent_for(self, spec: TenantSpec | None) -> bool:
        return spec is not None and spec.kv_snapshots.enabled

    # The request path --------------------------------------------------------------------------------

    def wants_export(self, owner: str, spec: TenantSpec | None, info: ModelInfo) -> bool:
        return bool(self.scopes(owner, spec, info)) and (
            self.prefix_cache is not None or self.persistent_for(spec)
        )

    async def restore(
        self,
        owner: str,
        spec: TenantSpec | None,
        info: ModelInfo,
        prompt: list[int],
        hint: int | None = None,
    ) -> KVSnapshot | None:
        """The longest cached prefix of `prompt` this tenant may use, or None (then it prefills)."""
        scopes = self.scopes(owner, spec, info)
        if not scopes or len(prompt) < scopes[0].block_size:
            return None
        hints = (hint,) if hint else ()
        if self.persistent_for(spec):
            deadline = deadline_in(self.config.restore_deadline_ms / 1000)
            found = await self.store_for(spec).fetch(scopes[:1], prompt, deadline=deadline, hints=hints)
            if found is not None:
                return found
        if self.prefix_cache is not None:
            return await self.prefix_cache.fetch(scopes, prompt, deadline=deadline_in(0.05))
        return None

    def keep(self, owner: str, spec: TenantSpec | None, info: ModelInfo, snapshot: KVSnapshot) -> str | None:
        """Store a finished sequence's KV (returns at once: uploads run in the background). The key,
        with the token count appended, is what a conversation records for its next turn."""
        if len(snapshot.token_ids) < self.config.min_tokens:
            return None
        scopes = self.scopes(owner, spec, info)
        if not scopes:
            return None
        key: str | None = None
        if self.persistent_for(spec):
            key = self.store_for(spec).put(scopes[0], snapshot)
        elif self.prefix_cache is not None:
            key = self.prefix_cache.put(scopes[0], snapshot)
        if self.prefix_cache is not None and len(scopes) > 1:
            self.prefix_cache.put(scopes[1], snapshot)  # what sharing tenants may reuse
        return f"{key}#{len(snapshot.token_ids)}" if key else None

    # Policy (the operator's jobs use the same store) ----------------------------------------------

    def close(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.close(timeout=5)
        for store in self._stores.values():
            store.close(timeout=30)
