"""The tiered KV snapshot store: memory → local disk → S3, found by the longest cached token prefix.

The request path (`lookup`, `load`, `fetch`) is async and bounded by the caller's deadline (a
`time.monotonic()` instant, so one budget spans lookup and load; `deadline_in(0.2)`): local answers come
from an in-memory index (memory tier, disk tier, S3 objects this process wrote, loaded, probed or listed), and
S3 unknowns are probed with a few concurrent HEADs from the longest block boundary down. boto3 blocks, so S3
and disk I/O run in a thread pool; a slow or unreachable S3 yields None when the time is up (the thread then
finishes on its own timeouts), and after a few consecutive failures S3 is skipped for a cooldown.

`put` never blocks the engine: the snapshot enters the memory tier at once and a bounded queue hands it to
uploader threads that encode it and write the disk tier and S3; when the queue is full the upload is
dropped and counted. A hit in a lower tier is promoted to the tiers above it.

Every snapshot handed out covers a prefix of the prompt (the engine's `restore_kv` contract): its token ids
are checked against the prompt, and objects read from disk or S3 are verified (`codec.decode`,
`codec.check_scope`) first. Any failure is a miss, counted by reason in `stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from ..engines.base import KVSnapshot
from . import codec
from .disk import DiskTier
from .keys import Scope, block_hashes, object_key, validate_namespace
from .memory import MemoryTier
from .s3 import S3Config, S3Tier, S3Unavailable, Usage
from .stats import KVStoreStats, Reason

log = logging.getLogger(__name__)

T = TypeVar("T")
Tier = Literal["memory", "disk", "s3"]


@dataclass(frozen=True)
class KVStoreConfig:
    memory_bytes: int = 1 << 30
    disk_dir: Path | None = None  # None: no disk tier
    disk_bytes: int = 16 << 30
    s3: S3Config | None = None  # None: no S3 tier
    compression: codec.CompressionPolicy = field(default_factory=codec.CompressionPolicy)
    max_probes: int = 4  # S3 HEADs per lookup, issued together, longest boundaries first
    # Probe S3 for a longer prefix even when this process has a shorter one. Off: with conversations
    # routed to the pod that served them, the local hit is the previous turn and the longer boundaries
    # are the new message, which nobody has; probing would put S3's latency on every warm request.
    probe_past_local_hit: bool = False
    max_snapshot_bytes: int = 4 << 30  # larger ones stay in memory only (one PutObject takes up to 5 GiB)
    max_attempts: int = 3  # candidates `fetch` tries before giving up
    queue_size: int = 16  # uploads waiting; beyond that put() drops (counted)
    upload_workers: int = 1
    io_threads: int = 8
    max_index_entries: int = 100_000
    warm_limit: int = 10_000  # objects `warm` lists per scope
    breaker_failures: int = 3  # consecutive S3 failures that open the circuit breaker
    breaker_cooldown: float = 5.0  # seconds lookups skip S3 once it is open
    # Let a prompt reuse the first blocks of a longer snapshot held in memory (a shared system prompt,
    # an edited last message): each snapshot is also found under every one of its block hashes. For
    # engines that can drop a restored sequence's tail (llama.cpp can, except on sliding-window models).
    partial_prefixes: bool = False
    # The key of every object's MAC (codec.py): objects without the right one are refused unread.
    mac_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if (self.disk_dir is not None or self.s3 is not None) and not self.mac_key:
            raise ValueError("a KV store with a disk or S3 tier needs a MAC key")


@dataclass(frozen=True)
class Hit:
    """A candidate for a prompt: the object under `block_hash` proves the first `matched_tokens` tokens."""

    scope: Scope
    block_hash: str
    matched_tokens: int
    tier: Tier  # where it was found (it may have moved by the time it is loaded)
    prompt: tuple[int, ...] = field(repr=False)
    # The snapshot runs past the prompt (it shares only `matched_tokens` and maybe a few more): the
    # engine restores it and drops the rest. Only from the memory tier, with `partial_prefixes` on.
    partial: bool = False


@dataclass
class _IndexEntry:
    namespace: str
    # Tokens after the last full block (a snapshot may end mid-block); None until this process has seen
    # the object's header. With the key's hash they tell whether the snapshot is a prefix of a prompt.
    tail: tuple[int, ...] | None
    in_s3: bool


@dataclass(frozen=True)
class _Job:
    scope: Scope
    block_hash: str
    key: str
    snapshot: KVSnapshot | None  # to encode, or
    blob: bytes | None  # already encoded (a promotion from S3)
    to_s3: bool


def deadline_in(seconds: float) -> float:
    """A deadline `seconds` from now, for `lookup`, `load` and `fetch`."""
    return time.monotonic() + seconds


def _is_prefix(snapshot: KVSnapshot, prompt: tuple[int, ...]) -> bool:
    n = len(snapshot.token_ids)
    return n <= len(prompt) and prompt[:n] == snapshot.token_ids


class KVSnapshotStore:
    def __init__(self, config: KVStoreConfig, stats: KVStoreStats | None = None) -> None:
        self.config = config
        self.stats = stats or KVStoreStats()
        self.memory = MemoryTier(config.memory_bytes)
        self.disk = DiskTier(config.disk_dir, config.disk_bytes) if config.disk_dir is not None else None
        self.s3 = S3Tier(config.s3) if config.s3 is not None else None
        self.root = self.s3.root if self.s3 is not None else ""
        self._index: OrderedDict[str, _IndexEntry] = OrderedDict()
        # block hash inside a snapshot held in memory -> that snapshot's own hash (partial_prefixes)
        self._inner: OrderedDict[str, str] = OrderedDict()
        self._index_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="kvstore-io")
        self._queue: queue.Queue[_Job | None] = queue.Queue(config.queue_size)
        self._pending = 0
        self._idle = threading.Condition()
        self._s3_failures = 0
        self._s3_skip_until = 0.0
        self._closed = False
        self._workers = [
            threading.Thread(target=self._upload_loop, name=f"kvstore-upload-{i}", daemon=True)
            for i in range(config.upload_workers)
        ]
        for worker in self._workers:
            worker.start()

    # ------------------------------------------------------------------------------------------- index

    def _remember(self, block_hash: str, namespace: str, tail: tuple[int, ...] | None, in_s3: bool) -> None:
        with self._index_lock:
            entry = self._index.pop(block_hash, None)
            if entry is not None:
                tail = tail if tail is not None else entry.tail
                in_s3 = in_s3 or entry.in_s3
            self._index[block_hash] = _IndexEntry(namespace, tail, in_s3)
            while len(self._index) > self.config.max_index_entries:
                self._index.popitem(last=False)

    def _forget(self, block_hash: str) -> None:
        with self._index_lock:
            self._index.pop(block_hash, None)

    def _known(self, block_hash: str) -> _IndexEntry | None:
        with self._index_lock:
            entry = self._index.get(block_hash)
            if entry is not None:
                self._index.move_to_end(block_hash)
            return entry

    def _local_tier(self, block_hash: str) -> Tier | None:
        if block_hash in self.memory:
            return "memory"
        if self.disk is not None and block_hash in self.disk:
            return "disk"
        entry = self._known(block_hash)
        if entry is not None and entry.in_s3 and self.s3 is not None:
            return "s3"
        return None

    # -------------------------------------------------------------------------------------- S3 health

    def _s3_available(self) -> bool:
        if self.s3 is None:
            return False
        if time.monotonic() < self._s3_skip_until:
            self.stats.inc("s3_skipped")
            return False
        return True

    def _s3_result(self, ok: bool) -> None:
        if ok:
            self._s3_failures = 0
            return
        self._s3_failures += 1
        if self._s3_failures >= self.config.breaker_failures:
            self._s3_skip_until = time.monotonic() + self.config.breaker_cooldown

    async def _run(self, fn: Callable[[], T], deadline: float) -> T:
        """fn() in the I/O pool; TimeoutError at the deadline (the thread finishes on its own)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._pool, fn), remaining)

    # ------------------------------------------------------------------------------------------ lookup

    def _candidates(self, scopes: Sequence[Scope], prompt: tuple[int, ...]) -> list[tuple[int, Scope, str]]:
        """(matched tokens, scope, hash) at every block boundary of every scope, longest first."""
        found: list[tuple[int, int, Scope, str]] = []
        for rank, scope in enumerate(scopes):
            for i, block_hash in enumerate(block_hashes(scope, prompt)):
                found.append(((i + 1) * scope.block_size, rank, scope, block_hash))
        found.sort(key=lambda c: (-c[0], c[1]))
        return [(matched, scope, block_hash) for matched, _, scope, block_hash in found]

    def _outer(self, block_hash: str, exclude: frozenset[str]) -> str | None:
        """The snapshot in memory that contains this block, when partial prefixes are on."""
        if not self.config.partial_prefixes:
            return None
        with self._index_lock:
            outer = self._inner.get(block_hash)
        if outer is None or outer in exclude or outer not in self.memory:
            return None
        return outer

    def _plausible(self, block_hash: str, matched: int, prompt: tuple[int, ...]) -> bool:
        """False when what we know of the object says it runs past or away from the prompt."""
        cached = self.memory.peek(block_hash)
        if cached is not None:
            return _is_prefix(cached.snapshot, prompt)
        entry = self._known(block_hash)
        if entry is None or entry.tail is None:
            return True
        return prompt[matched : matched + len(entry.tail)] == entry.tail

    async def lookup(
        self,
        scopes: Scope | Sequence[Scope],
        token_ids: Sequence[int],
        *,
        deadline: float,
        exclude: frozenset[str] = frozenset(),
        hints: Sequence[int] = (),
    ) -> Hit | None:
        """The longest cached prefix of `token_ids` under any of `scopes` (ties: the earlier scope).

        Pass the tenant's own scope, then the shared scope if it reads shared prefixes. Returns within
        `deadline` (time.monotonic()); None on a miss, or when S3 could not answer in time. What this
        process knows (memory, disk, S3 objects it has seen) is answered without I/O; S3 is probed only
        for boundaries it knows nothing about, and by default only when it knows no prefix at all:
        the `max_probes` longest, plus the boundaries of `hints`, token counts where a snapshot is
        expected (e.g. the length of the conversation's previous snapshot, which the conversation
        store can remember): a new message longer than a few blocks is otherwise past the probes.
        """
        self.stats.inc("lookup")
        hit = await self._lookup(scopes, token_ids, deadline, exclude, hints)
        if hit is None:
            self.stats.inc("miss")
        return hit

    async def _lookup(
        self,
        scopes: Scope | Sequence[Scope],
        token_ids: Sequence[int],
        deadline: float,
        exclude: frozenset[str] = frozenset(),
        hints: Sequence[int] = (),
    ) -> Hit | None:
        scope_list = [scopes] if isinstance(scopes, Scope) else list(scopes)
        prompt = tuple(token_ids)
        candidates = [c for c in self._candidates(scope_list, prompt) if c[2] not in exclude]
        best: Hit | None = None
        unknown: list[tuple[int, Scope, str]] = []
        for matched, scope, block_hash in candidates:
            tier = self._local_tier(block_hash)
            if tier is None:
                outer = self._outer(block_hash, exclude)
                if outer is not None:
                    best = Hit(scope, outer, matched, "memory", prompt, partial=True)
                    break
                unknown.append((matched, scope, block_hash))
                continue
            if self._plausible(block_hash, matched, prompt):
                best = Hit(scope, block_hash, matched, tier, prompt)
                break
        if best is not None and not self.config.probe_past_local_hit:
            return best
        longer = [c for c in unknown if best is None or c[0] > best.matched_tokens]
        hinted = {t // scope.block_size * scope.block_size for t in hints for scope in scope_list}
        probe = [c for c in longer if c[0] in hinted]
        probe += [c for c in longer if c[0] not in hinted][: self.config.max_probes]
        probe.sort(key=lambda c: -c[0])
        if probe and self._s3_available():
            found = await self._probe(probe, prompt, deadline)
            if found is not None:
                best = found
        return best

    async def _probe(
        self, probe: list[tuple[int, Scope, str]], prompt: tuple[int, ...], deadline: float
    ) -> Hit | None:
        assert self.s3 is not None
        s3 = self.s3
        self.stats.inc("s3_probe", n=len(probe))
        keys = [s3.key(scope, block_hash) for _, scope, block_hash in probe]
        tasks = [asyncio.ensure_future(self._run(functools.partial(s3.head, k), deadline)) for k in keys]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failure: Reason | None = None
        best: Hit | None = None
        for (matched, scope, block_hash), result in zip(probe, results, strict=True):
            if isinstance(result, TimeoutError):
                failure = "timeout"
            elif isinstance(result, BaseException):
                failure = failure or "s3_error"
                if not isinstance(result, S3Unavailable):
                    log.warning("S3 probe failed: %r", result)
            elif result is not None:
                self._remember(block_hash, scope.namespace, None, in_s3=True)
                if best is None:
                    best = Hit(scope, block_hash, matched, "s3", prompt)
        if failure is not None:
            self.stats.failed(failure)  # once per lookup, however many probes failed
        self._s3_result(failure is None)
        return best

    # -------------------------------------------------------------------------------------------- load

    async def load(self, hit: Hit, *, deadline: float) -> KVSnapshot | None:
        """The snapshot for a hit, verified and covering a prefix of the prompt, or None (counted)."""
        snapshot = self.memory.get(hit.block_hash)
        if snapshot is not None and hit.partial:
            n = hit.matched_tokens
            if snapshot.token_ids[:n] != hit.prompt[:n]:
                self.stats.failed("mismatch")
                return None
            self.stats.inc("hit_memory")
            return snapshot
        if snapshot is not None:
            if not _is_prefix(snapshot, hit.prompt):
                self.stats.failed("mismatch")
                return None
            self.stats.inc("hit_memory")
            return snapshot
        if self.disk is not None and hit.block_hash in self.disk:
            result = await self._load_disk(hit, deadline)
            if result is not None or time.monotonic() >= deadline:
                return result
        entry = self._known(hit.block_hash)
        if self.s3 is not None and (hit.tier == "s3" or (entry is not None and entry.in_s3)):
            return await self._load_s3(hit, deadline)
        self.stats.failed("not_found")
        return None

    def _verify(self, hit: Hit, blob: bytes) -> KVSnapshot | Reason:
        """Runs in the pool: decoding hashes the whole payload."""
        try:
            header, snapshot = codec.decode(blob, mac_key=self.config.mac_key)
            codec.check_scope(header, hit.scope, hit.block_hash)
        except codec.SnapshotRejected as exc:
            log.warning("KV snapshot %s rejected: %s", hit.block_hash[:16], exc)
            return exc.reason
        if not _is_prefix(snapshot, hit.prompt):
            return "mismatch"
        return snapshot

    def _accept(self, hit: Hit, snapshot: KVSnapshot, in_s3: bool) -> None:
        tail = snapshot.token_ids[hit.matched_tokens :]
        self._remember(hit.block_hash, hit.scope.namespace, tail, in_s3=in_s3)
        if self.memory.put(hit.block_hash, hit.scope.namespace, snapshot):
            self.stats.inc("evicted_memory")

    async def _load_disk(self, hit: Hit, deadline: float) -> KVSnapshot | None:
        disk = self.disk
        assert disk is not None

        def read_and_verify() -> KVSnapshot | Reason | None:
            blob = disk.read(hit.block_hash)
            if blob is None:
                return None
            result = self._verify(hit, blob)
            if isinstance(result, str):
                disk.remove(hit.block_hash)  # a bad file is never read twice
            return result

        try:
            result = await self._run(read_and_verify, deadline)
        except TimeoutError:
            self.stats.failed("timeout")
            return None
        except OSError as exc:
            log.warning("KV snapshot disk read failed: %r", exc)
            self.stats.failed("disk_error")
            return None
        if result is None:
            return None
        if isinstance(result, str):
            self.stats.failed(result)
            return None
        entry = self._known(hit.block_hash)
        self._accept(hit, result, in_s3=entry is not None and entry.in_s3)
        self.stats.inc("hit_disk")
        return result

    async def _load_s3(self, hit: Hit, deadline: float) -> KVSnapshot | None:
        s3 = self.s3
        assert s3 is not None
        if not self._s3_available():
            self.stats.failed("s3_error")
            return None
        key = s3.key(hit.scope, hit.block_hash)

        def get_and_verify() -> tuple[bytes, KVSnapshot | Reason] | None:
            blob = s3.get(key)
            if blob is None:
                return None
            return blob, self._verify(hit, blob)

        try:
            result = await self._run(get_and_verify, deadline)
        except TimeoutError:
            self._s3_result(False)
            self.stats.failed("timeout")
            return None
        except S3Unavailable as exc:
            log.warning("KV snapshot S3 read failed: %s", exc)
            self._s3_result(False)
            self.stats.failed("s3_error")
            return None
        self._s3_result(True)
        if result is None:
            self._forget(hit.block_hash)
            self.stats.failed("not_found")
            return None
        blob, verified = result
        if isinstance(verified, str):
            self.stats.failed(verified)
            return None
        self._accept(hit, verified, in_s3=True)
        if self.disk is not None:
            # Promote to disk off the request path; S3 already has it.
            self._enqueue(_Job(hit.scope, hit.block_hash, key, None, blob, to_s3=False))
        self.stats.inc("hit_s3")
        return verified

    async def fetch(
        self,
        scopes: Scope | Sequence[Scope],
        token_ids: Sequence[int],
        *,
        deadline: float,
        hints: Sequence[int] = (),
    ) -> KVSnapshot | None:
        """lookup + load by one deadline; a candidate that fails to load gives way to the next one.
        Counted as one lookup, and one miss unless it returns a snapshot. `hints` as in `lookup`."""
        self.stats.inc("lookup")
        excluded: set[str] = set()
        for _ in range(self.config.max_attempts):
            if time.monotonic() >= deadline:
                break
            hit = await self._lookup(scopes, token_ids, deadline, frozenset(excluded), hints)
            if hit is None:
                break
            snapshot = await self.load(hit, deadline=deadline)
            if snapshot is not None:
                return snapshot
            excluded.add(hit.block_hash)
        self.stats.inc("miss")
        return None

    # --------------------------------------------------------------------------------------------- put

    def put(self, scope: Scope, snapshot: KVSnapshot) -> str | None:
        """Keep a snapshot; returns its object key at once (None if it is not storable: shorter than one
        block, made by another engine than the scope's, or over max_snapshot_bytes). Disk and S3 writes
        happen in the background."""
        if self._closed:
            raise RuntimeError("the KV snapshot store is closed")
        n_blocks = len(snapshot.token_ids) // scope.block_size
        if (
            n_blocks == 0
            or snapshot.fingerprint != scope.engine_fingerprint
            or len(snapshot.data) > self.config.max_snapshot_bytes
        ):
            self.stats.inc("put_skipped")
            return None
        hashes = block_hashes(scope, snapshot.token_ids)
        block_hash = hashes[-1]
        key = object_key(self.root, scope, block_hash)
        if self.config.partial_prefixes:
            with self._index_lock:
                for inner in hashes[:-1]:
                    self._inner[inner] = block_hash
                    self._inner.move_to_end(inner)
                while len(self._inner) > self.config.max_index_entries:
                    self._inner.popitem(last=False)
        matched = n_blocks * scope.block_size
        self._remember(block_hash, scope.namespace, snapshot.token_ids[matched:], in_s3=False)
        if self.memory.put(block_hash, scope.namespace, snapshot):
            self.stats.inc("evicted_memory")
        self.stats.inc("put")
        if self.disk is not None or self.s3 is not None:
            self._enqueue(_Job(scope, block_hash, key, snapshot, None, to_s3=self.s3 is not None))
        return key

    def _enqueue(self, job: _Job) -> None:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._done()
            self.stats.inc("put_dropped")

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    def _upload_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._upload(job)
            except Exception:  # a worker must survive anything one job does
                log.exception("KV snapshot upload failed")
            finally:
                self._done()

    def _upload(self, job: _Job) -> None:
        if job.blob is not None:
            blob = job.blob
        else:
            assert job.snapshot is not None
            blob = codec.encode(job.scope, job.snapshot, self.config.compression, mac_key=self.config.mac_key)
        relpath = object_key("", job.scope, job.block_hash)
        if self.disk is not None:
            try:
                evicted = self.disk.write(job.block_hash, relpath, blob)
                self.stats.inc("disk_written")
                if evicted:
                    self.stats.inc("evicted_disk", n=evicted)
            except OSError as exc:
                log.warning("KV snapshot disk write failed: %r", exc)
                self.stats.inc("disk_error")
        if job.to_s3 and self.s3 is not None:
            try:
                self.s3.put(job.key, blob)
            except S3Unavailable as exc:
                log.warning("KV snapshot upload to S3 failed: %s", exc)
                self._s3_result(False)
                self.stats.inc("s3_upload_error")
                return
            self._s3_result(True)
            self._remember(job.block_hash, job.scope.namespace, None, in_s3=True)
            self.stats.inc("s3_uploaded")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued upload is done (or failed); False if `timeout` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued uploads (up to `timeout`), then stop the workers and the I/O pool."""
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1)
        for worker in self._workers:
            worker.join(timeout=1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------- S3 listing

    async def warm(self, scope: Scope, *, deadline: float | None = None) -> int:
        """Index the scope's objects already in S3 (e.g. at start); returns how many were listed."""
        s3 = self.s3
        if s3 is None or not self._s3_available():
            return 0
        try:
            found = await self._run(
                lambda: s3.list_scope(scope, self.config.warm_limit),
                deadline if deadline is not None else deadline_in(10.0),
            )
        except (TimeoutError, S3Unavailable) as exc:
            log.warning("KV snapshot listing failed: %r", exc)
            self._s3_result(False)
            return 0
        self._s3_result(True)
        for block_hash, _ in found:
            self._remember(block_hash, scope.namespace, None, in_s3=True)
        return len(found)

    # ------------------------------------------------------------------ policy (Tenant.spec.kvSnapshots)

    async def usage(self, namespace: str) -> Usage:
        """Objects and bytes of a namespace: in S3 when there is S3, else on the local disk."""
        validate_namespace(namespace)
        s3 = self.s3
        if s3 is not None:
            return await asyncio.to_thread(s3.usage, namespace)
        if self.disk is None:
            return Usage(0, 0)
        disk = self.disk
        files = [p for p in (disk.directory / namespace).rglob("*") if p.is_file()]
        return Usage(len(files), sum(p.stat().st_size for p in files))

    def _drop_local(self, namespace: str, older_than: float | None = None) -> None:
        self.memory.drop(namespace, older_than)
        if self.disk is not None:
            self.disk.drop(namespace, older_than)
        if older_than is None:
            with self._index_lock:
                for block_hash in [h for h, e in self._index.items() if e.namespace == namespace]:
                    del self._index[block_hash]

    def _forget_keys(self, keys: list[str]) -> None:
        for key in keys:
            block_hash = key.rsplit("/", 1)[-1]
            self._forget(block_hash)
            self.memory.remove(block_hash)
            if self.disk is not None:
                self.disk.remove(block_hash)
        if keys:
            self.stats.inc("s3_deleted", n=len(keys))

    async def expire(self, namespace: str, ttl_seconds: float, *, now: float | None = None) -> int:
        """Delete the namespace's snapshots older than `ttl_seconds` here and in S3; returns S3 deletions."""
        validate_namespace(namespace)
        cutoff = (time.time() if now is None else now) - ttl_seconds
        self._drop_local(namespace, older_than=cutoff)
        if self.s3 is None:
            return 0
        deleted = await asyncio.to_thread(self.s3.expire, namespace, ttl_seconds, now)
        self._forget_keys(deleted)
        return len(deleted)

    async def enforce_max_bytes(self, namespace: str, max_bytes: int) -> int:
        """Evict the namespace's oldest S3 objects beyond `max_bytes`; returns how many were deleted."""
        validate_namespace(namespace)
        if self.s3 is None:
            return 0
        deleted = await asyncio.to_thread(self.s3.enforce_max_bytes, namespace, max_bytes)
        self._forget_keys(deleted)
        return len(deleted)

    async def delete_tenant(self, namespace: str) -> int:
        """Delete every snapshot of a namespace, locally and in S3 (a deleted Tenant, deletionPolicy
        Delete); returns S3 deletions."""
        validate_namespace(namespace)
        self._drop_local(namespace)
        if self.s3 is None:
            return 0
        deleted = await asyncio.to_thread(self.s3.delete_tenant, namespace)
        self._forget_keys(deleted)
        return len(deleted)
