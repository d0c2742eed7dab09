"""The S3 tier (any S3-compatible server), synchronous: the store runs it in a thread pool.

One object per snapshot, written by a single PutObject: S3 makes an object visible only once all of it has
arrived, so a reader never sees part of one, whatever happens to the writer. Two clients: lookups get one
attempt and short timeouts (a slow S3 must cost a request no more than its deadline), uploads and the policy
operations retry.

The policy operations (usage, expire, enforce_max_bytes, delete_tenant) list `<root>/<namespace>/` only:
the namespace is validated as a single path segment and every listed key is checked to be a snapshot
object of that namespace in the store's layout (`<root>/<namespace>/<model>/<version>/<block hash>`)
before anything is deleted, so one tenant's operation can never touch another's objects, nor anything
else that lies under the prefix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

from .keys import Scope, hash_of_key, in_layout, namespace_prefix, object_key, validate_root

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

_MISSING = {"NoSuchKey", "404", "NotFound"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


class S3Unavailable(Exception):
    """S3 could not be reached or answered with an error (not a plain 'no such key')."""


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""  # the store's root inside the bucket, e.g. "realm/kv"
    endpoint_url: str | None = None  # None: AWS
    region: str | None = None
    access_key: str | None = None  # None: boto3's usual credential chain
    secret_key: str | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    connect_timeout: float = 1.0
    read_timeout: float = 5.0
    upload_attempts: int = 3
    max_pool_connections: int = 16


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # unix seconds, as the server recorded it


@dataclass(frozen=True)
class Usage:
    objects: int
    bytes: int


def _client(config: S3Config, *, attempts: int, read_timeout: float) -> S3Client:
    cfg = botocore.config.Config(
        s3={"addressing_style": config.addressing_style},
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=config.connect_timeout,
        read_timeout=read_timeout,
        # Our own sha256 covers the payload; S3-compatible servers differ in trailing-checksum support.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=config.max_pool_connections,
    )
    # A session of its own: boto3.client() shares a process-wide session whose credentials are resolved
    # once, so a process (or a test run) that changed AWS_* after its first client would keep the old ones.
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        config=cfg,
    )
    return client


def _missing(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code", "")) in _MISSING or status == 404


class S3Tier:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.bucket = config.bucket
        self.root = validate_root(config.prefix.strip("/"))
        self._fast = _client(config, attempts=1, read_timeout=config.read_timeout)
        self._slow = _client(
            config, attempts=config.upload_attempts, read_timeout=max(30.0, config.read_timeout)
        )

    def key(self, scope: Scope, block_hash: str) -> str:
        return object_key(self.root, scope, block_hash)

    # -- objects

    def head(self, key: str) -> int | None:
        """The object's size, or None if there is none."""
        try:
            resp = self._fast.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise S3Unavailable(str(exc)) from exc
        except BotoCoreError as exc:
            raise S3Unavailable(str(exc)) from exc
        return int(resp["ContentLength"])

    def get(self, key: str) -> bytes | None:
        try:
            resp = self._fast.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise S3Unavailable(str(exc)) from exc
        except BotoCoreError as exc:
            raise S3Unavailable(str(exc)) from exc

    def put(self, key: str, blob: bytes) -> None:
        try:
            self._slow.put_object(
                Bucket=self.bucket, Key=key, Body=blob, ContentType="application/octet-stream"
            )
        except (ClientError, BotoCoreError) as exc:
            raise S3Unavailable(str(exc)) from exc

    # -- listings

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            pages = self._slow.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj.get("Key", "")
                    if not key.startswith(prefix):  # never trust a listing to stay inside its prefix
                        continue
                    modified = obj.get("LastModified")
                    yield ObjectInfo(
                        key,
                        int(obj.get("Size", 0)),
                        modified.timestamp() if isinstance(modified, datetime) else 0.0,
                    )
        except (ClientError, BotoCoreError) as exc:
            raise S3Unavailable(str(exc)) from exc

    def list_namespace(self, namespace: str) -> Iterator[ObjectInfo]:
        """The namespace's snapshot objects: only keys in the store's layout (keys.in_layout)."""
        for info in self.list_prefix(namespace_prefix(self.root, namespace)):
            if in_layout(self.root, namespace, info.key):
                yield info

    def list_scope(self, scope: Scope, limit: int) -> list[tuple[str, str]]:
        """(block hash, key) of up to `limit` objects of one scope's directory."""
        prefix = f"{self.root}/{scope.directory}/" if self.root else f"{scope.directory}/"
        found: list[tuple[str, str]] = []
        for info in self.list_prefix(prefix):
            block_hash = hash_of_key(info.key)
            if block_hash is not None and info.key == self.key(scope, block_hash):
                found.append((block_hash, info.key))
                if len(found) >= limit:
                    break
        return found

    # -- policy (Tenant.spec.kvSnapshots)

    def usage(self, namespace: str) -> Usage:
        objects = total = 0
        for info in self.list_namespace(namespace):
            objects += 1
            total += info.size
        return Usage(objects, total)

    def expire(self, namespace: str, ttl_seconds: float, now: float | None = None) -> list[str]:
        """Delete the namespace's objects last written more than `ttl_seconds` ago; returns their keys.
        Ages use the server's LastModified against this machine's clock."""
        cutoff = (time.time() if now is None else now) - ttl_seconds
        old = [info.key for info in self.list_namespace(namespace) if info.last_modified < cutoff]
        return self._delete(namespace, old)

    def enforce_max_bytes(self, namespace: str, max_bytes: int) -> list[str]:
        """Delete the namespace's oldest objects until it holds at most `max_bytes`; returns their keys."""
        infos = sorted(self.list_namespace(namespace), key=lambda i: (i.last_modified, i.key))
        total = sum(i.size for i in infos)
        doomed: list[str] = []
        for info in infos:
            if total <= max_bytes:
                break
            doomed.append(info.key)
            total -= info.size
        return self._delete(namespace, doomed)

    def delete_tenant(self, namespace: str) -> list[str]:
        """Delete every object of the namespace (a deleted Tenant with deletionPolicy Delete)."""
        return self._delete(namespace, [info.key for info in self.list_namespace(namespace)])

    def _delete(self, namespace: str, keys: list[str]) -> list[str]:
        prefix = namespace_prefix(self.root, namespace)
        if any(not in_layout(self.root, namespace, k) for k in keys):
            raise ValueError(f"refusing to delete keys outside the snapshot layout under {prefix!r}")
        deleted: list[str] = []
        try:
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i : i + _DELETE_BATCH]
                resp = self._slow.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
                failed = {e.get("Key", "") for e in resp.get("Errors", [])}
                deleted += [k for k in batch if k not in failed]
        except (ClientError, BotoCoreError) as exc:
            raise S3Unavailable(str(exc)) from exc
        return deleted
