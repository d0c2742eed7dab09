"""Conversations on S3 (or any server speaking S3's conditional writes: AWS S3 since 2024,
MinIO, Ceph RGW recent releases), for runtimes in a cluster that share them.

One JSON object per conversation, `<prefix>/<tenant>/conversations/<id>.json`. Compare-and-swap
is a conditional PutObject: `If-None-Match: *` to create, `If-Match: <ETag read>` to replace;
the server answers 412 (or 409 when two conditional writes race) to the writer that lost. A
listing is a ListObjectsV2 of the tenant's prefix: ids sort newest first (models.new_id), so
key order is the listing's order and `after` is `StartAfter`.

Why S3 rather than another store: the runtime already needs an object store for KV-cache
snapshots (large blobs), every cloud and most clusters have one (MinIO on premises), and
conditional writes give exactly the per-document CAS conversations need, with no server of our
own to run. boto3 blocks, so CasStore runs every call in a worker thread.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

from .models import Conversation, Limits, StoreUnavailable, valid_id
from .store import CasStore

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def make_client(
    endpoint: str | None,
    region: str | None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> S3Client:
    """A client for the store; without keys, boto3's usual chain finds credentials."""
    config = botocore.config.Config(
        # Path-style works with every S3-compatible server; virtual hosts need DNS per bucket.
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        # Checksums only where S3 requires them: older S3-compatible servers reject the newer
        # default trailing checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )
    # A session of its own: boto3.client() shares a process-wide session whose credentials are resolved
    # once, so a process (or a test run) that changed AWS_* after its first client would keep the old ones.
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )
    return client


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> str:
    return str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3ConversationStore(CasStore[str]):
    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "realm", limits: Limits | None = None
    ) -> None:
        super().__init__(limits)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="realm-s3-list")
        self._checked = False
        self._check_lock = threading.Lock()

    def _check_conditional_writes(self) -> None:
        """Refuse to write through a server that ignores If-None-Match/If-Match.

        Such a server (S3-compatible stores before their 2024-2025 releases) accepts the
        conditional PutObject and overwrites unconditionally: compare-and-swap would silently
        become last-writer-wins. Checked once, on the first write: a probe object created with
        If-None-Match: * must refuse to be created again.
        """
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            key = (
                f"{self.prefix}/.cas-probe/{secrets.token_hex(8)}"
                if self.prefix
                else f".cas-probe/{secrets.token_hex(8)}"
            )
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
                    honoured = False
                except ClientError as e:
                    if not (_code(e) in _LOST_RACE or _status(e) in ("412", "409")):
                        raise
                    honoured = True
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as e:
                raise self._fail("check conditional writes", e) from e
            if not honoured:
                raise StoreUnavailable(
                    "The S3 server ignores conditional writes (If-None-Match); conversations need them "
                    "for compare-and-swap (AWS S3, MinIO and Ceph RGW releases since 2024 have them)."
                )
            self._checked = True

    def _dir(self, tenant: str) -> str:
        return f"{self.prefix}/{tenant}/conversations/" if self.prefix else f"{tenant}/conversations/"

    def _key(self, tenant: str, conversation_id: str) -> str:
        return f"{self._dir(tenant)}{conversation_id}.json"

    def _fail(self, what: str, e: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"The conversation store failed to {what}: {e}")

    def _read(self, tenant: str, conversation_id: str) -> tuple[Conversation, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(tenant, conversation_id))
            body = obj["Body"].read()
        except ClientError as e:
            if _code(e) in _MISSING or _status(e) == "404":
                return None
            raise self._fail("read", e) from e
        except BotoCoreError as e:
            raise self._fail("read", e) from e
        return Conversation.model_validate_json(body), obj["ETag"]

    def _put(self, conversation: Conversation, **condition: Any) -> bool:
        self._check_conditional_writes()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(conversation.tenant, conversation.id),
                Body=conversation.model_dump_json().encode(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as e:
            if _code(e) in _LOST_RACE or _status(e) in ("412", "409"):
                return False
            raise self._fail("write", e) from e
        except BotoCoreError as e:
            raise self._fail("write", e) from e
        return True

    def _insert(self, conversation: Conversation) -> None:
        if not self._put(conversation, IfNoneMatch="*"):
            # 120 random bits collided, or the server ignores the condition's meaning: never overwrite.
            raise StoreUnavailable(f"Conversation id {conversation.id} already exists; retry.")

    def _replace(self, conversation: Conversation, token: str) -> bool:
        return self._put(conversation, IfMatch=token)

    def _delete(self, tenant: str, conversation_id: str) -> bool:
        key = self._key(tenant, conversation_id)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING or _status(e) == "404":
                return False
            raise self._fail("delete", e) from e
        except BotoCoreError as e:
            raise self._fail("delete", e) from e
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("delete", e) from e
        return True

    def _list(self, tenant: str, limit: int, after: str | None) -> list[Conversation]:
        directory = self._dir(tenant)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": directory, "MaxKeys": limit}
        if after is not None:
            args["StartAfter"] = self._key(tenant, after)
        try:
            listed = self.client.list_objects_v2(**args)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("list", e) from e
        ids = []
        for obj in listed.get("Contents", []):
            name = obj.get("Key", "")[len(directory) :]
            if name.endswith(".json") and valid_id(name[: -len(".json")]):
                ids.append(name[: -len(".json")])
        # The documents are fetched in parallel; one deleted since the listing is skipped.
        found = self._pool.map(lambda i: self._read(tenant, i), ids)
        return [c for c, _ in (f for f in found if f is not None) if c.tenant == tenant]

    def _close(self) -> None:
        self._pool.shutdown(wait=False)
