"""Collections kept as objects: per collection a small manifest and one immutable data object.

    <owner>/<collection id>/manifest.json      what the collection is, its counts, its data object's sha256
    <owner>/<collection id>/data-<n>-<rand>    the items and the index (collection.py's layout)

A write makes a new data object, then swaps the manifest by compare-and-swap on its ETag; a reader
checks the data's sha256 against the manifest. So a crash leaves either the old or the new collection
(never a torn one), and another pod's write is seen at its next read of the manifest. `owner` is the
tenant's owner key (a digest, never a name from a request), so one tenant cannot reach another's keys.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .collection import Collection, CorruptCollection
from .manifests import COLLECTION_ID, Manifest, Usage, delete_owner, manifests, usage_of
from .objects import Objects

T = TypeVar("T")
CAS_ATTEMPTS = 16
# A writer that lost a swap waits a random while (growing with its losses) before it tries again, so
# that two busy writers do not keep colliding in lockstep.
BACKOFF_S = 0.005
# How long a search may use the manifest it read last instead of reading it again.
FRESH_S = 1.0


class CollectionNotFound(Exception):
    pass


class CollectionConflict(Exception):
    """Writers kept racing: CAS_ATTEMPTS swaps of the manifest all lost."""


@dataclass
class _Cached:
    etag: str
    manifest: Manifest
    collection: Collection
    read_at: float


def _checked(cid: str) -> str:
    """`cid` if it is a collection id; an id of another shape (`../x`) is one that does not exist."""
    if not COLLECTION_ID.match(cid):
        raise CollectionNotFound(cid)
    return cid


class CollectionStore:
    def __init__(self, objects: Objects) -> None:
        self.objects = objects
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def _manifest_key(owner: str, cid: str) -> str:
        return f"{owner}/{_checked(cid)}/manifest.json"

    def _lock(self, owner: str, cid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((owner, cid), threading.Lock())

    def create(
        self, owner: str, *, name: str, dims: int, model: str | None, metadata: dict[str, str]
    ) -> Manifest:
        manifest = Manifest(
            id=f"vs_{secrets.token_hex(12)}",
            name=name,
            dims=dims,
            model=model,
            created_at=int(time.time()),
            metadata=metadata,
        )
        data = Collection(dims).to_bytes()
        manifest = self._write_data(owner, manifest, data)
        if not self.objects.put(
            self._manifest_key(owner, manifest.id), manifest.model_dump_json().encode(), create=True
        ):
            raise CollectionConflict("a collection id collided; retry")
        return manifest

    def list(self, owner: str) -> list[Manifest]:
        return manifests(self.objects, owner)

    def usage(self, owner: str, *, besides: str | None = None) -> Usage:
        """The owner's collections counted, but for the one `besides` (a write's own, counted apart)."""
        return usage_of(self.objects, owner, besides=besides)

    def delete_owner(self, owner: str) -> int:
        """Delete every collection of the owner (a deleted Tenant's); the number deleted."""
        deleted = delete_owner(self.objects, owner)
        for cached in [k for k in self._cache if k[0] == owner]:
            self._cache.pop(cached, None)
        return deleted

    def manifest(self, owner: str, cid: str) -> Manifest:
        got = self.objects.get(self._manifest_key(owner, cid))
        if got is None:
            raise CollectionNotFound(cid)
        return Manifest.model_validate_json(got[0])

    def delete(self, owner: str, cid: str) -> None:
        keys = self.objects.list(f"{owner}/{_checked(cid)}/")
        if not keys:
            raise CollectionNotFound(cid)
        # The manifest first: once it is gone the collection is, whatever happens to its data objects.
        self.objects.delete(self._manifest_key(owner, cid))
        for key in keys:
            if not key.endswith("/manifest.json"):
                self.objects.delete(key)
        self._cache.pop((owner, cid), None)

    def read(self, owner: str, cid: str, *, fresh_s: float = FRESH_S) -> tuple[Manifest, Collection]:
        """The collection as last written (by any pod), from the cache while its manifest is unchanged."""
        cached = self._cache.get((owner, cid))
        if cached is not None and time.monotonic() - cached.read_at < fresh_s:
            return cached.manifest, cached.collection
        return self._load(owner, cid)

    def _load(self, owner: str, cid: str) -> tuple[Manifest, Collection]:
        for _ in range(CAS_ATTEMPTS):
            got = self.objects.get(self._manifest_key(owner, cid))
            if got is None:
                self._cache.pop((owner, cid), None)
                raise CollectionNotFound(cid)
            body, etag = got
            cached = self._cache.get((owner, cid))
            if cached is not None and cached.etag == etag:
                cached.read_at = time.monotonic()
                return cached.manifest, cached.collection
            manifest = Manifest.model_validate_json(body)
            data = self.objects.get(manifest.data_key or "")
            if data is None:
                continue  # replaced between the two reads: read the new manifest
            if hashlib.sha256(data[0]).hexdigest() != manifest.sha256:
                raise CorruptCollection(
                    f"collection {cid}: its data object does not match its manifest's sha256"
                )
            collection = Collection.from_bytes(data[0])
            self._cache[(owner, cid)] = _Cached(etag, manifest, collection, time.monotonic())
            return manifest, collection
        raise CollectionConflict(f"collection {cid} kept changing while it was read")

    def update(self, owner: str, cid: str, change: Callable[[Manifest, Collection], T]) -> tuple[Manifest, T]:
        """Apply `change` to the current collection and swap the manifest; on a lost race, again on the
        new state. `change` may raise to refuse (nothing is written)."""
        with self._lock(owner, cid):
            for attempt in range(CAS_ATTEMPTS):
                manifest, _ = self._load(owner, cid)
                etag = self._cache[(owner, cid)].etag
                # Changed on a copy: a lost race must not leave the cache holding what was never written.
                work = Collection.from_bytes(self._cache[(owner, cid)].collection.to_bytes())
                result = change(manifest, work)
                data = work.to_bytes()
                new = manifest.model_copy(
                    update={
                        "version": manifest.version + 1,
                        "count": len(work),
                        "vector_bytes": work.vector_bytes,
                    }
                )
                new = self._write_data(owner, new, data)
                if self.objects.put(
                    self._manifest_key(owner, cid), new.model_dump_json().encode(), if_match=etag
                ):
                    if manifest.data_key:
                        self.objects.delete(manifest.data_key)
                    self._cache.pop((owner, cid), None)
                    self._load(owner, cid)
                    return new, result
                self.objects.delete(new.data_key or "")
                self._cache.pop((owner, cid), None)
                time.sleep(random.uniform(0, BACKOFF_S * 2 ** min(attempt, 6)))
            raise CollectionConflict(f"collection {cid}: {CAS_ATTEMPTS} writers raced; retry")

    def _write_data(self, owner: str, manifest: Manifest, data: bytes) -> Manifest:
        key = f"{owner}/{manifest.id}/data-{manifest.version:08d}-{secrets.token_hex(4)}"
        self.objects.put(key, data)
        return manifest.model_copy(update={"data_key": key, "sha256": hashlib.sha256(data).hexdigest()})
