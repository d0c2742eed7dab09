"""The local-disk tier: encoded objects in a directory, least recently used evicted first, within a budget.

Files mirror the object keys (`<dir>/<namespace>/<model>/<version>/<hash>`). A write goes to a temporary
file in the same directory and is renamed into place (`os.replace` is atomic), so a reader, or the next
process after a crash, sees either the whole object or none; leftovers of interrupted writes are removed at
start. There is no fsync: this is a cache, and a file damaged by a power loss fails its checksum on load.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .keys import hash_of_key, validate_namespace

_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class DiskEntry:
    relpath: str
    size: int
    mtime: float

    @property
    def namespace(self) -> str:
        return self.relpath.split("/", 1)[0]


class DiskTier:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, DiskEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        found: list[tuple[str, DiskEntry]] = []
        for path in self.directory.rglob("*"):
            if not path.is_file():
                continue
            if path.name.endswith(_TMP_SUFFIX):
                path.unlink(missing_ok=True)  # an interrupted write
                continue
            rel = path.relative_to(self.directory).as_posix()
            block_hash = hash_of_key(rel)
            if block_hash is None or rel.count("/") != 3:
                continue
            st = path.stat()
            found.append((block_hash, DiskEntry(rel, st.st_size, st.st_mtime)))
        # Oldest first: without access times from a previous run, age is the best recency there is.
        for block_hash, entry in sorted(found, key=lambda item: item[1].mtime):
            self._entries[block_hash] = entry
            self._bytes += entry.size
        self._evict()

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: str) -> bool:
        return block_hash in self._entries

    def write(self, block_hash: str, relpath: str, blob: bytes) -> int:
        """Store atomically and evict down to the budget; returns how many files were evicted.
        Raises OSError on a failed write (nothing is left behind)."""
        if len(blob) > self.max_bytes:
            return 0
        path = self.directory / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            with tmp.open("wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entry = DiskEntry(relpath, len(blob), path.stat().st_mtime)
        with self._lock:
            old = self._entries.pop(block_hash, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[block_hash] = entry
            self._bytes += entry.size
        return self._evict()

    def _evict(self) -> int:
        victims: list[DiskEntry] = []
        with self._lock:
            while self._bytes > self.max_bytes and self._entries:
                _, victim = self._entries.popitem(last=False)
                self._bytes -= victim.size
                victims.append(victim)
        for victim in victims:
            (self.directory / victim.relpath).unlink(missing_ok=True)
        return len(victims)

    def read(self, block_hash: str) -> bytes | None:
        """The object's bytes (marked as recently used), or None if it is not here (anymore)."""
        with self._lock:
            entry = self._entries.get(block_hash)
            if entry is None:
                return None
            self._entries.move_to_end(block_hash)
        try:
            return (self.directory / entry.relpath).read_bytes()
        except FileNotFoundError:
            self.remove(block_hash)
            return None

    def remove(self, block_hash: str) -> bool:
        with self._lock:
            entry = self._entries.pop(block_hash, None)
            if entry is None:
                return False
            self._bytes -= entry.size
        (self.directory / entry.relpath).unlink(missing_ok=True)
        return True

    def drop(self, namespace: str, older_than: float | None = None) -> int:
        """Remove a namespace's files (modified before `older_than`, if given); returns how many."""
        validate_namespace(namespace)
        with self._lock:
            doomed = [
                h
                for h, e in self._entries.items()
                if e.namespace == namespace and (older_than is None or e.mtime < older_than)
            ]
        removed = sum(self.remove(h) for h in doomed)
        with contextlib.suppress(OSError):
            # Empty directories of a deleted namespace.
            for sub in sorted((self.directory / namespace).rglob("*"), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
        return removed
