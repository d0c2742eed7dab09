"""Prefix keys: which stored snapshot can serve which prompt.

Like TensorRT-LLM's KV-cache connector (`RequestData.block_hashes`) and LMCache, token ids are cut into
blocks of `block_size` tokens and hashed as a chain, so a key names a whole prefix, never a block on its own:

    h_0 = sha256(format version, scope)        h_i = sha256(h_{i-1} || block_i as little-endian uint32)

The scope (tenant salt, model, version, digest, engine fingerprint, block size) is inside h_0, so equal
tokens under different scopes never share a key, and every key is unique across scopes. A snapshot is stored
under the hash of its last full block; a prompt's candidates are the hashes at each of its block boundaries,
longest first.

Object keys are `<root>/<namespace>/<model>/<model_version>/<hash>`. Every path segment is validated here so
that one namespace's listing (`<root>/<namespace>/`) can never reach another's.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Bumped whenever the key derivation or the object layout changes: old objects then simply stop matching.
FORMAT_VERSION = 2
DEFAULT_BLOCK_SIZE = 64

#: The namespace of tenants that opted into sharing (Tenant.spec.kvSnapshots.sharePrefixCache). Tenant
#: names are Kubernetes names (lowercase, start alphanumeric), so a leading underscore can never collide.
SHARED_NAMESPACE = "_shared"

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_TOKEN = 2**32 - 1


class InvalidScopeError(ValueError):
    """A name that could not safely be a key segment (a '/', '..', empty, too long, odd characters)."""


def validate_segment(value: str, what: str) -> str:
    """One path segment: [A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters, no '..'."""
    if not _SEGMENT.fullmatch(value) or ".." in value:
        raise InvalidScopeError(f"invalid {what} for a KV snapshot key: {value!r}")
    return value


def validate_namespace(namespace: str) -> str:
    if namespace == SHARED_NAMESPACE:
        return namespace
    return validate_segment(namespace, "namespace")


def validate_root(root: str) -> str:
    """The store-wide key prefix: '' or segments joined by '/' (no leading or trailing '/')."""
    if root:
        for part in root.split("/"):
            validate_segment(part, "key prefix segment")
    return root


def validate_hash(value: str) -> str:
    if not _HASH.fullmatch(value):
        raise InvalidScopeError(f"not a block hash: {value!r}")
    return value


@dataclass(frozen=True)
class Scope:
    """Everything a snapshot is only valid for. Build it once per (tenant, model) and reuse it.

    `namespace` is where objects live (the tenant's name, or SHARED_NAMESPACE); `salt` keeps hashes of
    different tenants apart even for identical prompts (a per-tenant secret, or one shared salt for every
    tenant that opted into sharing). `engine_fingerprint` must equal `KVSnapshot.fingerprint` (engine and
    version, KV dtype, tokens per block, parallel layout): a snapshot is never restored into anything else.
    """

    namespace: str
    salt: str
    model: str
    model_version: str
    model_digest: str
    engine_fingerprint: str
    block_size: int = DEFAULT_BLOCK_SIZE
    root_hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        validate_segment(self.model, "model name")
        validate_segment(self.model_version, "model version")
        if not self.salt:
            raise InvalidScopeError("a scope needs a non-empty salt")
        if not self.model_digest or not self.engine_fingerprint:
            raise InvalidScopeError("a scope needs the model digest and the engine fingerprint")
        if not 1 <= self.block_size <= 1 << 16:
            raise InvalidScopeError(f"block size out of range: {self.block_size}")
        # JSON of a fixed list: unambiguous, so no two scopes serialize alike.
        material = json.dumps(
            [
                "realm-kv",
                FORMAT_VERSION,
                self.namespace,
                self.salt,
                self.model,
                self.model_version,
                self.model_digest,
                self.engine_fingerprint,
                self.block_size,
            ],
            separators=(",", ":"),
        ).encode()
        object.__setattr__(self, "root_hash", hashlib.sha256(material).hexdigest())

    @property
    def directory(self) -> str:
        """`<namespace>/<model>/<model_version>`: where this scope's objects live under the root."""
        return f"{self.namespace}/{self.model}/{self.model_version}"


def block_hashes(scope: Scope, token_ids: Sequence[int]) -> list[str]:
    """The chain hash after each full block: element i covers token_ids[: (i + 1) * block_size]."""
    size = scope.block_size
    out: list[str] = []
    prev = bytes.fromhex(scope.root_hash)
    for end in range(size, len(token_ids) + 1, size):
        block = token_ids[end - size : end]
        if any(t < 0 or t > _MAX_TOKEN for t in block):
            raise ValueError("token ids must fit in uint32")
        digest = hashlib.sha256(prev + struct.pack(f"<{size}I", *block)).digest()
        out.append(digest.hex())
        prev = digest
    return out


def snapshot_hash(scope: Scope, token_ids: Sequence[int]) -> str | None:
    """The hash a snapshot of `token_ids` is stored under (its last full block); None without one."""
    hashes = block_hashes(scope, token_ids)
    return hashes[-1] if hashes else None


def object_key(root: str, scope: Scope, block_hash: str) -> str:
    validate_hash(block_hash)
    return f"{root}/{scope.directory}/{block_hash}" if root else f"{scope.directory}/{block_hash}"


def namespace_prefix(root: str, namespace: str) -> str:
    """The listing prefix of one namespace, with its trailing '/': 'a' never matches 'ab/...'."""
    validate_namespace(namespace)
    return f"{root}/{namespace}/" if root else f"{namespace}/"


def in_layout(root: str, namespace: str, key: str) -> bool:
    """Whether `key` is a snapshot object of `namespace` as the store writes it:
    `<root>/<namespace>/<model>/<version>/<block hash>`, nothing more and nothing less. The policy
    operations touch only such keys, never whatever else lies under the prefix."""
    prefix = namespace_prefix(root, namespace)
    if not key.startswith(prefix):
        return False
    parts = key[len(prefix) :].split("/")
    if len(parts) != 3 or not _HASH.fullmatch(parts[2]):
        return False
    return all(_SEGMENT.fullmatch(p) and ".." not in p for p in parts[:2])


def hash_of_key(key: str) -> str | None:
    """The block hash at the end of an object key, or None if the key is not one of ours."""
    tail = key.rsplit("/", 1)[-1]
    return tail if _HASH.fullmatch(tail) else None
