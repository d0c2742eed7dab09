"""Conversations on S3 (or any server speaking S3's conditional writes: AWS S3 since 2024,
MinIO, Ceph RGW recent releases), for runtimes in a cluster that share them.

One JSON object per conversation, `<prefix>/<owner key>/conversations/<id>.json` (the owner key: the
Tenant's namespace and uid under the installation secret, runtime/spec/identity.py). Compare-and-swap
is a conditional PutObject: `If-None-Match: *` to create, `If-Match: <ETag read>` to replace;
the server answers 412 (or 409 when two conditional writes race) to the writer that lost. A delete
is a DeleteObject with `If-Match` where the server honours it (probed with the writes). A
listing is a ListObjectsV2 of the tenant's prefix: ids sort newest first (models.new_id), so
key order is the listing's order and `after` is `StartAfter`.

Why S3 rather than another store: the runtime already needs an object store for KV-cache
snapshots (large blobs), every cloud and most clusters have one (MinIO on premises), and
conditional writes give exactly the per-document CAS conversations need, with no server of our
own to run. boto3 blocks, so CasStore runs every call in a worker thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

from .models import Conversation, Limits, StoreUnavailable, valid_id
from .store import CasStore, Stored

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DELETE_ATTEMPTS = 16
log = logging.getLogger(__name__)


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
        # Whether the server honours If-Match on DeleteObject (found by the probe).
        self.conditional_deletes = False

    def verify_at_start(self) -> None:
        """Run the conditional-request probe now, so that a server that ignores conditions stops the
        runtime before it serves. A server that cannot be reached yet is left to the first write."""
        try:
            self._check_conditional_writes()
        except StoreUnavailable as e:
            if isinstance(e.__cause__, (ClientError, BotoCoreError)):
                log.warning("conversation store not checked at start (checked on first write): %s", e)
                return
            raise

    def _check_conditional_writes(self) -> None:
        """Refuse to write through a server that ignores If-None-Match or If-Match on PutObject.

        Such a server (S3-compatible stores before their 2024-2025 releases) accepts the conditional
        PutObject and overwrites unconditionally: compare-and-swap would silently become
        last-writer-wins. Checked once, at start (`verify_at_start`) or on the first write, on a probe
        object: created with If-None-Match: *, it must refuse to be created again, and refuse a replace
        whose If-Match names an ETag it does not have. Conditional DeleteObject (If-Match) is probed
        too: AWS S3 honours it, MinIO (2025 releases) ignores it; deletes use it where it is honoured.
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
            wrong = f'"{secrets.token_hex(16)}"'  # an ETag the probe object does not have
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
                create_refused = self._refused(
                    lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
                )
                replace_refused = self._refused(
                    lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=b"3", IfMatch=wrong)
                )
                delete_refused = self._refused(
                    lambda: self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=wrong)
                )
                if delete_refused:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as e:
                raise self._fail("check conditional writes", e) from e
            ignored = [
                name
                for name, refused in (("If-None-Match", create_refused), ("If-Match", replace_refused))
                if not refused
            ]
            if ignored:
                raise StoreUnavailable(
                    f"The S3 server ignores conditional writes ({' and '.join(ignored)} on PutObject); "
                    "conversations need them for compare-and-swap (AWS S3, MinIO and Ceph RGW releases "
                    "since 2024 have them). Refusing to use it."
                )
            self.conditional_deletes = delete_refused
            self._checked = True

    @staticmethod
    def _refused(call: Callable[[], object]) -> bool:
        """Whether a conditional request was refused as a lost condition (412, or 409 for a race)."""
        try:
            call()
        except ClientError as e:
            if _code(e) in _LOST_RACE or _status(e) in ("412", "409"):
                return True
            raise
        return False

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
        """Delete the document read as this tenant's: with If-Match on its ETag where the server honours
        it, so that what is deleted is what was checked (a write in between makes it read again)."""
        self._check_conditional_writes()
        key = self._key(tenant, conversation_id)
        for _ in range(_DELETE_ATTEMPTS):
            found = self._read(tenant, conversation_id)
            if found is None or found[0].tenant != tenant:
                return False
            try:
                if self.conditional_deletes:
                    self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=found[1])
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if _code(e) in _LOST_RACE or _status(e) in ("412", "409"):
                    continue  # changed since it was read: read it again
                raise self._fail("delete", e) from e
            except BotoCoreError as e:
                raise self._fail("delete", e) from e
            return True
        raise StoreUnavailable(f"Conversation '{conversation_id}' is changing too fast to delete.")

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

    def _usage(self, tenant: str) -> list[Stored]:
        """From a listing alone: sizes and LastModified (the server's clock) of the tenant's documents."""
        directory = self._dir(tenant)
        found: list[Stored] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=directory
            ):
                for obj in page.get("Contents", []):
                    name = obj.get("Key", "")[len(directory) :]
                    conversation_id = name[: -len(".json")]
                    if name.endswith(".json") and valid_id(conversation_id):
                        modified = obj.get("LastModified")
                        changed = modified.timestamp() if modified is not None else time.time()
                        found.append(Stored(conversation_id, int(obj.get("Size", 0)), changed))
        except (ClientError, BotoCoreError) as e:
            raise self._fail("list", e) from e
        return found

    def _close(self) -> None:
        self._pool.shutdown(wait=False)
