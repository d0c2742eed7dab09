"""Where collections' objects live: a folder (one pod: the embedded default) or an S3 bucket (every pod
of a namespace). Writes are whole objects; a manifest changes only by compare-and-swap on its ETag, so
two pods writing one collection never lose each other's writes (the loser retries on the new state)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Protocol


class ObjectsUnavailable(Exception):
    """The backing store failed (network, permissions); the request may be retried."""


class Objects(Protocol):
    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def put(self, key: str, data: bytes, *, if_match: str | None = None, create: bool = False) -> bool:
        """False when the condition failed (`if_match` not the current ETag, or `create` and it exists)."""
        ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[str]: ...


class DirObjects:
    """Objects as files under `root`, written atomically (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # conditions are checked and applied under it: one process

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ObjectsUnavailable(f"reading {key}: {e}") from e
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes, *, if_match: str | None = None, create: bool = False) -> bool:
        path = self._path(key)
        with self._lock:
            if create or if_match is not None:
                current = self.get(key)
                if create and current is not None:
                    return False
                if if_match is not None and (current is None or current[1] != if_match):
                    return False
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with tmp.open("wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(path)
            except OSError as e:
                raise ObjectsUnavailable(f"writing {key}: {e}") from e
        return True

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise ObjectsUnavailable(f"deleting {key}: {e}") from e

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


class ConditionalWritesIgnored(ObjectsUnavailable):
    """The server accepts If-None-Match / If-Match on PutObject but overwrites anyway: compare-and-swap
    would silently become last-writer-wins, so nothing is written through it."""


class S3Objects:
    """Objects in a bucket under `prefix`, through a boto3 client (conditional writes: If-Match and
    If-None-Match, which S3 and MinIO honour; checked on a probe object before the first conditional
    write, since older S3-compatible servers ignore them)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._verified = False
        self._verify_lock = threading.Lock()

    def verify_conditional_writes(self) -> None:
        """Raise ConditionalWritesIgnored unless the server refuses a second If-None-Match: * create
        and a replace whose If-Match names another ETag; ObjectsUnavailable when it cannot be asked."""
        with self._verify_lock:
            if self._verified:
                return
            probe = f".cas-probe/{secrets.token_hex(8)}"
            self._put(probe, b"1", {"IfNoneMatch": "*"})
            ignored = [
                name
                for name, condition in (
                    ("If-None-Match", {"IfNoneMatch": "*"}),
                    ("If-Match", {"IfMatch": f'"{secrets.token_hex(16)}"'}),
                )
                if self._put(probe, b"2", condition)
            ]
            self.delete(probe)
            if ignored:
                raise ConditionalWritesIgnored(
                    f"the S3 server ignores conditional writes ({' and '.join(ignored)} on PutObject); "
                    "collections need them for compare-and-swap. Refusing to write through it."
                )
            self._verified = True

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _status(e: Exception) -> str:
        response = getattr(e, "response", None) or {}
        return str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))

    @staticmethod
    def _code(e: Exception) -> str:
        response = getattr(e, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return obj["Body"].read(), str(obj["ETag"])
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404", "NotFound") or self._status(e) == "404":
                return None
            raise ObjectsUnavailable(f"reading {key}: {e}") from e

    def put(self, key: str, data: bytes, *, if_match: str | None = None, create: bool = False) -> bool:
        condition: dict[str, str] = {}
        if create:
            condition["IfNoneMatch"] = "*"
        if if_match is not None:
            condition["IfMatch"] = if_match
        if condition:
            self.verify_conditional_writes()
        return self._put(key, data, condition)

    def _put(self, key: str, data: bytes, condition: dict[str, str]) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except Exception as e:
            if self._status(e) in ("412", "409") or self._code(e) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise ObjectsUnavailable(f"writing {key}: {e}") from e
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            raise ObjectsUnavailable(f"deleting {key}: {e}") from e

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        strip = len(self._key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                out.extend(str(o["Key"])[strip:] for o in page.get("Contents", []))
        except Exception as e:
            raise ObjectsUnavailable(f"listing {prefix}: {e}") from e
        return sorted(out)
