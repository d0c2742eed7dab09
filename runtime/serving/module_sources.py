"""Where a tenant's WebAssembly module comes from in a pod (`Tenant.spec.wasm`, pinned by sha256).

Looked up in this order, first hit wins:
1. `<modulesDir>/<sha256>.wasm`: fetched earlier, or put there by whoever runs the pod;
2. `<modulesDir>/configmaps/<sha256>.wasm`: the operator projects each published Tenant's ConfigMap
   (binaryData key `module`) there, read-only;
3. `s3Uri`: downloaded with the runtime's S3 settings (REALM_S3_ENDPOINT / REALM_S3_REGION, boto3's
   credential chain) and kept as (1), written atomically so a crash never leaves half a module. An
   object larger than RuntimeConfig.server.maxS3ModuleBytes is refused: by its declared length before
   the download, and by a read that stops one byte past the cap whatever the length claimed.

Bytes whose sha256 is not the pin are never deployed and never written: a tampered or stale object
is an error naming the tenant, not a different program.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from realm.runtime.atomic_file import write_atomically
from realm.runtime.spec.tenant import WasmModuleSource

#: Subfolder of modulesDir where the operator projects ConfigMap-held modules (shared with the operator).
CONFIGMAP_SUBDIR = "configmaps"
#: The ConfigMap binaryData key that holds a module.
CONFIGMAP_KEY = "module"

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\s]+)$")

#: (bucket, key, max_bytes) -> the object's bytes, at most max_bytes + 1 of them (more means too large);
#: raises on any failure.
S3Get = Callable[[str, str, int], bytes]

#: RuntimeConfig.server.maxS3ModuleBytes's default.
MAX_S3_MODULE_BYTES = 64 * 1024 * 1024


class ModuleUnavailable(Exception):
    """The module could not be found, fetched or verified; the message says which and why."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri)
    if match is None:
        raise ModuleUnavailable(f"{uri!r} is not an s3://bucket/key URI")
    return match["bucket"], match["key"]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _too_large(uri: str, size: int | None, max_bytes: int) -> ModuleUnavailable:
    what = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return ModuleUnavailable(
        f"{uri} holds {what}, over this runtime's limit of {max_bytes} bytes for a module "
        "(server.maxS3ModuleBytes)"
    )


def module_bytes(
    source: WasmModuleSource,
    modules_dir: Path,
    s3_get: S3Get | None,
    max_s3_bytes: int = MAX_S3_MODULE_BYTES,
) -> bytes:
    """The pinned module's bytes, verified; ModuleUnavailable when no source has them."""
    want = source.sha256
    name = f"{want}.wasm"
    mismatched: list[str] = []
    for path in (modules_dir / name, modules_dir / CONFIGMAP_SUBDIR / name):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ModuleUnavailable(f"cannot read {path}: {e}") from e
        if _digest(data) == want:
            return data
        mismatched.append(str(path))
    if source.s3_uri and s3_get is not None:
        bucket, key = parse_s3_uri(source.s3_uri)
        try:
            data = s3_get(bucket, key, max_s3_bytes)
        except ObjectTooLarge as e:
            raise _too_large(source.s3_uri, e.size, max_s3_bytes) from e
        except Exception as e:  # boto3 raises a zoo of types; all mean "not from S3, not now"
            raise ModuleUnavailable(f"cannot fetch {source.s3_uri}: {e}") from e
        if len(data) > max_s3_bytes:
            raise _too_large(source.s3_uri, None, max_s3_bytes)
        got = _digest(data)
        if got != want:
            raise ModuleUnavailable(f"{source.s3_uri} has sha256 {got[:12]}…, not the pinned {want[:12]}…")
        try:
            modules_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(modules_dir / name, data)
        except OSError:
            pass  # a read-only folder only costs a download at the next start
        return data
    where = ", ".join(mismatched) + " (sha256 differs)" if mismatched else f"{modules_dir}"
    if source.s3_uri and s3_get is None:
        where += "; S3 is not configured in this runtime"
    raise ModuleUnavailable(f"module {want[:12]}… not found in {where}")


class ObjectTooLarge(Exception):
    """An S3Get's refusal: the object declares more bytes than it may hold."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def s3_getter() -> S3Get:
    """GetObject with the runtime's S3 settings (the same environment the KV and conversation stores read)."""
    from realm.runtime.conversations.s3_store import make_client

    client = make_client(os.environ.get("REALM_S3_ENDPOINT"), os.environ.get("REALM_S3_REGION"))

    def get(bucket: str, key: str, max_bytes: int) -> bytes:
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if size > max_bytes:
            raise ObjectTooLarge(size)
        # The object may have been replaced since the HEAD: the read stops past the cap regardless.
        stream = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            body: bytes = stream.read(max_bytes + 1)
        finally:
            stream.close()
        return body

    return get
