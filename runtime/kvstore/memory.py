"""The in-process tier: decoded snapshots, least recently used evicted first, within a byte budget."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..engines.base import KVSnapshot


@dataclass(frozen=True)
class MemoryEntry:
    namespace: str
    snapshot: KVSnapshot
    created: float


class MemoryTier:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, MemoryEntry] = OrderedDict()
        self._bytes = 0
        # The uploader thread promotes and the event loop reads: one short lock, never held during I/O.
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: str) -> bool:
        return block_hash in self._entries

    def put(self, block_hash: str, namespace: str, snapshot: KVSnapshot, created: float | None = None) -> int:
        """Insert (or replace) and evict down to the budget; returns how many entries were evicted.
        A snapshot larger than the whole budget is not kept."""
        size = len(snapshot.data)
        if size > self.max_bytes:
            self.remove(block_hash)
            return 0
        entry = MemoryEntry(namespace, snapshot, time.time() if created is None else created)
        evicted = 0
        with self._lock:
            old = self._entries.pop(block_hash, None)
            if old is not None:
                self._bytes -= len(old.snapshot.data)
            self._entries[block_hash] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, victim = self._entries.popitem(last=False)
                self._bytes -= len(victim.snapshot.data)
                evicted += 1
        return evicted

    def get(self, block_hash: str) -> KVSnapshot | None:
        with self._lock:
            entry = self._entries.get(block_hash)
            if entry is None:
                return None
            self._entries.move_to_end(block_hash)
            return entry.snapshot

    def peek(self, block_hash: str) -> MemoryEntry | None:
        """The entry without touching its recency."""
        with self._lock:
            return self._entries.get(block_hash)

    def remove(self, block_hash: str) -> bool:
        with self._lock:
            entry = self._entries.pop(block_hash, None)
            if entry is None:
                return False
            self._bytes -= len(entry.snapshot.data)
            return True

    def drop(self, namespace: str, older_than: float | None = None) -> int:
        """Remove a namespace's entries (created before `older_than`, if given); returns how many."""
        with self._lock:
            doomed = [
                h
                for h, e in self._entries.items()
                if e.namespace == namespace and (older_than is None or e.created < older_than)
            ]
        return sum(self.remove(h) for h in doomed)
