"""KV snapshot store without S3: keys, codec, compression policy, memory and disk tiers, promotion, budgets.

S3 behaviour (a real MinIO) is in test_kvstore_s3.py, which imports the helpers at the top of this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from realm.runtime.engines.base import KVSnapshot
from realm.runtime.kvstore import (
    SHARED_NAMESPACE,
    CompressionPolicy,
    InvalidScopeError,
    KVSnapshotStore,
    KVStoreConfig,
    KVStoreStats,
    Scope,
    block_hashes,
    codec,
    deadline_in,
    snapshot_hash,
)
from realm.runtime.kvstore.keys import namespace_prefix, object_key

B = 16  # tokens per block in these tests (the default is 64)
FP = "llamacpp-0.3.36/f16/seq/tp1"
MAC = b"the installation's KV MAC key"


def scope(namespace: str = "acme", *, salt: str | None = None, **kw: object) -> Scope:
    args: dict[str, object] = {
        "namespace": namespace,
        "salt": salt or f"salt-{namespace}",
        "model": "smollm2-135m-instruct",
        "model_version": "abc123",
        "model_digest": "sha256:" + "0" * 64,
        "engine_fingerprint": FP,
        "block_size": B,
    }
    args.update(kw)
    return Scope(**args)  # type: ignore[arg-type]


def tokens(n: int, seed: int = 0) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    return tuple(int(t) for t in rng.integers(0, 49152, n))


def kv_bytes(n_tokens: int, seed: int = 0, per_token: int = 512) -> bytes:
    """Bytes shaped like f16 KV (normal values): zstd gains little on them."""
    rng = np.random.default_rng(seed + 1000)
    return rng.standard_normal(n_tokens * per_token // 2).astype(np.float16).tobytes()


def snap(token_ids: tuple[int, ...], data: bytes | None = None, fingerprint: str = FP) -> KVSnapshot:
    return KVSnapshot(token_ids, kv_bytes(len(token_ids)) if data is None else data, fingerprint)


def local_store(tmp_path: Path | None = None, **kw: object) -> KVSnapshotStore:
    args: dict[str, object] = {"memory_bytes": 64 << 20, "mac_key": MAC}
    if tmp_path is not None:
        args["disk_dir"] = tmp_path / "kv"
    args.update(kw)
    return KVSnapshotStore(KVStoreConfig(**args))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ keys


def test_chain_hash_is_deterministic_and_prefix_shaped() -> None:
    ids = tokens(5 * B + 3)
    hashes = block_hashes(scope(), ids)
    assert len(hashes) == 5
    assert hashes == block_hashes(scope(), list(ids))
    # A prefix's hashes are a prefix of the hashes: what makes longest-prefix lookup work.
    assert block_hashes(scope(), ids[: 3 * B]) == hashes[:3]
    assert snapshot_hash(scope(), ids) == hashes[-1]
    assert snapshot_hash(scope(), ids[: B - 1]) is None
    # Changing one token changes that block's hash and every one after it, none before.
    changed = list(ids)
    changed[2 * B + 1] += 1
    other = block_hashes(scope(), changed)
    assert other[:2] == hashes[:2]
    assert all(a != b for a, b in zip(other[2:], hashes[2:], strict=True))


@pytest.mark.parametrize(
    "change",
    [
        {"salt": "another-salt"},
        {"namespace": "other"},
        {"model": "gemma-3-270m"},
        {"model_version": "def456"},
        {"model_digest": "sha256:" + "1" * 64},
        {"engine_fingerprint": "llamacpp-0.3.36/q8_0/seq/tp1"},
        {"block_size": 8},
    ],
)
def test_every_scope_field_changes_every_key(change: dict[str, object]) -> None:
    ids = tokens(4 * B)
    base = set(block_hashes(scope(), ids))
    kw = {"namespace": "acme", "salt": "salt-acme", **change}
    changed = set(block_hashes(scope(**kw), ids))  # type: ignore[arg-type]
    assert base.isdisjoint(changed)


@pytest.mark.parametrize(
    "name", ["", "a/b", "../b", "..", "a..b", "/a", "a/", ".hidden", "_other", "x" * 129, "a b", "é"]
)
def test_names_that_could_escape_a_prefix_are_rejected(name: str) -> None:
    with pytest.raises(InvalidScopeError):
        scope(name)
    with pytest.raises(InvalidScopeError):
        namespace_prefix("realm/kv", name)
    with pytest.raises(InvalidScopeError):
        scope(model=name)


def test_object_keys_and_prefixes() -> None:
    s = scope("team-a")
    h = snapshot_hash(s, tokens(B))
    assert h is not None
    assert object_key("realm/kv", s, h) == f"realm/kv/team-a/smollm2-135m-instruct/abc123/{h}"
    assert object_key("", s, h) == f"team-a/smollm2-135m-instruct/abc123/{h}"
    assert namespace_prefix("realm/kv", "team-a") == "realm/kv/team-a/"
    assert namespace_prefix("", SHARED_NAMESPACE) == "_shared/"
    with pytest.raises(InvalidScopeError):
        object_key("realm", s, "../../x")


# ----------------------------------------------------------------------------------------------- codec


def test_compression_policy_keeps_zstd_only_where_it_pays() -> None:
    policy = CompressionPolicy()
    f16 = kv_bytes(512)  # ~256 KiB of f16 normals: zstd gains ~1.1x, below the 1.2x threshold
    assert policy.choose(f16) == ("none", f16)
    sparse = bytes(200_000) + os.urandom(1000)
    kind, packed = policy.choose(sparse)
    assert kind == "zstd" and len(packed) < len(sparse) / 10
    assert CompressionPolicy(enabled=False).choose(sparse) == ("none", sparse)
    assert CompressionPolicy(min_ratio=1.01).choose(f16)[0] == "zstd"
    for data in (f16, sparse):
        s = scope()
        blob = codec.encode(s, snap(tokens(B), data), policy, mac_key=MAC)
        header, out = codec.decode(blob, mac_key=MAC)
        assert out.data == data and header.raw_length == len(data)


def test_codec_round_trip_and_header() -> None:
    s = scope()
    ids = tokens(2 * B + 5)
    original = snap(ids)
    blob = codec.encode(s, original, CompressionPolicy(), mac_key=MAC)
    header, out = codec.decode(blob, mac_key=MAC)
    codec.check_scope(header, s, block_hashes(s, ids)[-1])
    assert out == original
    assert header.token_count == len(ids) and header.compression == "none"
    assert header.model_digest == s.model_digest and header.engine_fingerprint == FP


def test_an_object_without_this_installations_mac_is_refused_before_it_is_parsed() -> None:
    s = scope()
    ids = tokens(2 * B)
    other = codec.encode(s, snap(ids), CompressionPolicy(), mac_key=b"another installation")
    assert _reason(other) == "forged"
    tampered = bytearray(codec.encode(s, snap(ids), CompressionPolicy(), mac_key=MAC))
    tampered[len(tampered) // 2] ^= 0x01  # one bit of the payload
    assert _reason(bytes(tampered)) == "forged"
    # A header that does not even parse is never parsed: the MAC is checked first.
    assert _reason(b"RKVS\x05\x00\x00\x00{{{{{" + bytes(codec.MAC_BYTES)) == "forged"


def _reason(blob: bytes, s: Scope | None = None, block_hash: str | None = None) -> str:
    with pytest.raises(codec.SnapshotRejected) as info:
        header, _ = codec.decode(blob, mac_key=MAC)
        if s is not None and block_hash is not None:
            codec.check_scope(header, s, block_hash)
    return info.value.reason


def sealed(body: bytes) -> bytes:
    """`body` with a valid MAC: what only a writer holding the key makes (so, damage of our own making)."""
    return body + hmac.new(MAC, body, hashlib.sha256).digest()


def test_codec_rejects_every_kind_of_damage() -> None:
    s = scope()
    ids = tokens(2 * B)
    h = block_hashes(s, ids)[-1]
    blob = codec.encode(s, snap(ids), CompressionPolicy(), mac_key=MAC)
    body = blob[: -codec.MAC_BYTES]
    flipped = bytearray(body)
    flipped[-10] ^= 0xFF
    assert _reason(sealed(bytes(flipped))) == "corrupt"
    assert _reason(sealed(body[:-1])) == "truncated"
    assert _reason(blob[:6]) == "truncated"
    assert _reason(sealed(body[: len(body) // 10])) == "truncated"  # ends inside the header
    assert _reason(sealed(body + b"x")) == "corrupt"
    assert _reason(sealed(b"XXXX" + body[4:])) == "corrupt"
    assert _reason(sealed(b"RKVS\xff\xff\xff\xff" + body[8:])) == "corrupt"
    header_len = int.from_bytes(body[4:8], "little")
    garbage = body[:8] + b"{" * header_len + body[8 + header_len :]
    assert _reason(sealed(garbage)) == "corrupt"
    # Compressed payloads: damage inside zstd data is caught by the checksum before decompression.
    zblob = codec.encode(s, snap(ids, bytes(100_000)), CompressionPolicy(), mac_key=MAC)
    assert codec.decode(zblob, mac_key=MAC)[0].compression == "zstd"
    zflipped = bytearray(zblob[: -codec.MAC_BYTES])
    zflipped[-5] ^= 0x01
    assert _reason(sealed(bytes(zflipped))) == "corrupt"
    # Valid objects that belong elsewhere.
    assert _reason(blob, scope("other"), h) == "mismatch"
    assert _reason(blob, scope(engine_fingerprint="trtllm/fp8"), h) == "mismatch"
    assert _reason(blob, scope(model_digest="sha256:" + "f" * 64), h) == "mismatch"
    assert _reason(blob, s, block_hashes(s, tokens(2 * B, seed=9))[-1]) == "mismatch"


# ------------------------------------------------------------------------------------------ the store


async def test_lookup_finds_the_longest_cached_prefix() -> None:
    store = local_store()
    s = scope()
    ids = tokens(10 * B)
    for blocks in (1, 3, 5):
        assert store.put(s, snap(ids[: blocks * B])) is not None
    hit = await store.lookup(s, ids[: 6 * B + 2], deadline=deadline_in(1))
    assert hit is not None and hit.matched_tokens == 5 * B and hit.tier == "memory"
    loaded = await store.load(hit, deadline=deadline_in(1))
    assert loaded is not None and loaded.token_ids == ids[: 5 * B]
    # Diverging inside block 4: the 3-block snapshot is the longest that still is a prefix.
    diverged = list(ids)
    diverged[3 * B + 4] += 1
    got = await store.fetch(s, diverged, deadline=deadline_in(1))
    assert got is not None and len(got.token_ids) == 3 * B
    assert await store.fetch(s, tokens(4 * B, seed=5), deadline=deadline_in(1)) is None
    assert await store.fetch(s, ids[: B - 1], deadline=deadline_in(1)) is None
    assert store.stats.get("miss") == 2
    store.close()


async def test_a_snapshot_ending_mid_block_is_served_only_to_prompts_it_prefixes() -> None:
    store = local_store()
    s = scope()
    ids = tokens(4 * B)
    store.put(s, snap(ids[: 2 * B + 5]))
    got = await store.fetch(s, ids, deadline=deadline_in(1))
    assert got is not None and got.token_ids == ids[: 2 * B + 5]
    # Same two full blocks, different tail: never hand out KV for tokens the prompt does not have.
    other_tail = ids[: 2 * B] + tuple(t + 1 for t in ids[2 * B : 4 * B])
    assert await store.fetch(s, other_tail, deadline=deadline_in(1)) is None
    # A prompt shorter than the snapshot is not served either (the engine could not use the extra KV).
    assert await store.fetch(s, ids[: 2 * B + 2], deadline=deadline_in(1)) is None
    store.close()


async def test_scopes_never_share_entries_and_shared_scope_is_opt_in() -> None:
    store = local_store()
    ids = tokens(3 * B)
    a, b = scope("team-a"), scope("team-b")
    shared = scope(SHARED_NAMESPACE, salt="cluster-shared-salt")
    store.put(a, snap(ids))
    assert await store.fetch(b, ids, deadline=deadline_in(1)) is None
    assert await store.fetch(scope("team-a", salt="rotated"), ids, deadline=deadline_in(1)) is None
    assert await store.fetch(a, ids, deadline=deadline_in(1)) is not None
    store.put(shared, snap(ids[: 2 * B]))
    hit = await store.lookup([b, shared], ids, deadline=deadline_in(1))
    assert hit is not None and hit.scope == shared and hit.matched_tokens == 2 * B
    # The tenant's own, longer entry wins over the shared one.
    hit = await store.lookup([a, shared], ids, deadline=deadline_in(1))
    assert hit is not None and hit.scope == a and hit.matched_tokens == 3 * B
    store.close()


async def test_put_skips_short_and_foreign_snapshots() -> None:
    store = local_store()
    s = scope()
    assert store.put(s, snap(tokens(B - 1))) is None
    assert store.put(s, snap(tokens(B), fingerprint="trtllm/fp8")) is None
    assert store.stats.get("put_skipped") == 2 and len(store.memory) == 0
    store.close()


async def test_memory_tier_is_lru_within_its_byte_budget() -> None:
    one = len(kv_bytes(B))
    store = local_store(memory_bytes=3 * one)
    s = scope()
    prompts = [tokens(B, seed=i) for i in range(4)]
    for p in prompts[:3]:
        store.put(s, snap(p))
    assert await store.fetch(s, prompts[0], deadline=deadline_in(1)) is not None  # now most recent
    store.put(s, snap(prompts[3]))  # evicts prompts[1], the least recently used
    assert store.memory.used_bytes <= 3 * one
    assert await store.fetch(s, prompts[1], deadline=deadline_in(1)) is None
    for i in (0, 2, 3):
        assert await store.fetch(s, prompts[i], deadline=deadline_in(1)) is not None
    assert store.stats.get("evicted_memory") == 1
    store.close()


async def test_disk_tier_serves_what_memory_evicted_and_promotes_it(tmp_path: Path) -> None:
    one = len(kv_bytes(2 * B))
    store = local_store(tmp_path, memory_bytes=one)
    s = scope()
    first, second = tokens(2 * B, seed=1), tokens(2 * B, seed=2)
    store.put(s, snap(first))
    store.put(s, snap(second))  # evicts `first` from memory
    assert store.flush(10)
    assert store.stats.get("disk_written") == 2
    hit = await store.lookup(s, first, deadline=deadline_in(1))
    assert hit is not None and hit.tier == "disk"
    got = await store.load(hit, deadline=deadline_in(5))
    assert got == snap(first)
    assert store.stats.get("hit_disk") == 1
    assert await store.fetch(s, first, deadline=deadline_in(1)) == snap(first)
    assert store.stats.get("hit_memory") == 1  # promoted
    store.close()


async def test_disk_tier_budget_evicts_oldest_files(tmp_path: Path) -> None:
    s = scope()
    blob_size = len(codec.encode(s, snap(tokens(B)), CompressionPolicy(), mac_key=MAC))
    store = local_store(tmp_path, memory_bytes=1, disk_bytes=2 * blob_size + 100)
    for i in range(3):
        store.put(s, snap(tokens(B, seed=i)))
        assert store.flush(10)
    assert store.disk is not None and len(store.disk) == 2
    assert store.disk.used_bytes <= 2 * blob_size + 100
    assert len([p for p in (tmp_path / "kv").rglob("*") if p.is_file()]) == 2
    assert await store.fetch(s, tokens(B, seed=0), deadline=deadline_in(1)) is None
    assert await store.fetch(s, tokens(B, seed=2), deadline=deadline_in(1)) is not None
    assert store.stats.get("evicted_disk") == 1
    store.close()


async def test_a_new_process_finds_the_disk_tier(tmp_path: Path) -> None:
    s = scope()
    ids = tokens(3 * B + 1)
    first = local_store(tmp_path)
    first.put(s, snap(ids))
    first.close()
    second = local_store(tmp_path)
    assert await second.fetch(s, ids + tokens(5, seed=3), deadline=deadline_in(2)) == snap(ids)
    second.close()


def _only_file(root: Path) -> Path:
    (path,) = [p for p in root.rglob("*") if p.is_file()]
    return path


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "empty", "foreign", "other-installation", "tmp-leftover"]
)
async def test_damaged_disk_objects_are_refused_and_counted(tmp_path: Path, damage: str) -> None:
    s = scope()
    ids = tokens(2 * B)
    writer = local_store(tmp_path)
    writer.put(s, snap(ids))
    writer.close()
    path = _only_file(tmp_path / "kv")
    blob = path.read_bytes()
    # Damage breaks the MAC; only an object of our own installation gets as far as its scope.
    expected = {
        "flip": "forged",
        "truncate": "forged",
        "empty": "truncated",
        "foreign": "mismatch",
        "other-installation": "forged",
    }
    if damage == "flip":
        path.write_bytes(blob[:-3] + bytes([blob[-3] ^ 0x40]) + blob[-2:])
    elif damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        # A well-formed object of another tenant placed under this key.
        path.write_bytes(codec.encode(scope("intruder"), snap(ids), CompressionPolicy(), mac_key=MAC))
    elif damage == "other-installation":
        # The right scope and tokens, written by someone without this installation's key.
        path.write_bytes(codec.encode(s, snap(ids), CompressionPolicy(), mac_key=b"someone else"))
    else:
        # What a crash mid-write leaves: only the temporary file, which must never be served.
        path.rename(path.with_name(f".{path.name}.dead.tmp"))
    reader = local_store(tmp_path)
    assert await reader.fetch(s, ids, deadline=deadline_in(2)) is None
    if damage == "tmp-leftover":
        assert not any((tmp_path / "kv").rglob("*.tmp"))  # cleaned at start
        assert reader.stats.get("load_failed") == 0
    else:
        assert reader.stats.get("load_failed", expected[damage]) == 1
        assert not path.exists()  # a bad file is removed, never read twice
    reader.close()


async def test_put_never_blocks_and_drops_when_the_queue_is_full(tmp_path: Path) -> None:
    store = local_store(tmp_path, queue_size=1)
    assert store.disk is not None
    gate, writing = threading.Event(), threading.Event()
    real_write = store.disk.write

    def slow_write(block_hash: str, relpath: str, blob: bytes) -> int:
        writing.set()
        gate.wait(10)
        return real_write(block_hash, relpath, blob)

    store.disk.write = slow_write  # type: ignore[method-assign]
    s = scope()
    store.put(s, snap(tokens(B, seed=0)))
    assert writing.wait(10)  # the worker is busy with the first one
    start = time.monotonic()
    for i in range(1, 4):
        store.put(s, snap(tokens(B, seed=i)))
    assert time.monotonic() - start < 0.5
    # One upload in progress, one queued, the rest dropped: kept in memory only.
    assert store.stats.get("put_dropped") == 2
    assert await store.fetch(s, tokens(B, seed=3), deadline=deadline_in(1)) is not None
    gate.set()
    assert store.flush(10)
    assert store.stats.get("disk_written") == 2
    store.close()


async def test_local_policy_operations(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    a, b = scope("team-a"), scope("team-b")
    store.put(a, snap(tokens(B, seed=1)))
    store.put(b, snap(tokens(B, seed=2)))
    assert store.flush(10)
    assert (await store.usage("team-a")).objects == 1
    assert await store.expire("team-a", 60) == 0  # nothing is old
    assert await store.fetch(a, tokens(B, seed=1), deadline=deadline_in(1)) is not None
    await store.expire("team-a", 60, now=time.time() + 3600)
    assert await store.fetch(a, tokens(B, seed=1), deadline=deadline_in(1)) is None
    await store.delete_tenant("team-b")
    assert await store.fetch(b, tokens(B, seed=2), deadline=deadline_in(1)) is None
    assert (await store.usage("team-b")).objects == 0
    with pytest.raises(InvalidScopeError):
        await store.delete_tenant("../team-a")
    store.close()


async def test_stats_listener_sees_every_event() -> None:
    seen: list[tuple[str, str]] = []
    store = KVSnapshotStore(KVStoreConfig(), KVStoreStats(lambda event, reason: seen.append((event, reason))))
    s = scope()
    store.put(s, snap(tokens(B)))
    await store.fetch(s, tokens(B), deadline=deadline_in(1))
    await store.fetch(s, tokens(B, seed=4), deadline=deadline_in(1))
    assert ("put", "") in seen and ("hit_memory", "") in seen and ("miss", "") in seen
    assert store.stats.snapshot()["lookup"] == 2
    store.close()


async def test_lookup_is_fast_with_many_entries() -> None:
    store = local_store(memory_bytes=1 << 30)
    s = scope(block_size=64)
    for i in range(200):
        store.put(s, KVSnapshot(tokens(64 * 8, seed=i), b"x" * 100, FP))
    prompt = tokens(64 * 8, seed=150) + tokens(4096 - 64 * 8, seed=7)
    start = time.perf_counter()
    for _ in range(20):
        hit = await store.lookup(s, prompt, deadline=deadline_in(1))
    per_lookup = (time.perf_counter() - start) / 20
    assert hit is not None and hit.matched_tokens == 64 * 8
    assert per_lookup < 0.05, per_lookup  # 64 block hashes of a 4096-token prompt (~1 ms), dict probes
    store.close()


def test_asyncio_is_not_needed_for_put() -> None:
    # put() is plain synchronous code: the engine's thread can call it too.
    store = local_store()
    assert store.put(scope(), snap(tokens(B))) is not None
    assert asyncio.run(store.fetch(scope(), tokens(B), deadline=deadline_in(1))) is not None
    store.close()


async def test_partial_prefixes_serve_the_first_blocks_of_a_longer_snapshot() -> None:
    """A shared system prompt: the prompt agrees with a cached snapshot for 2.5 blocks, then differs.
    With partial_prefixes the snapshot is found by its inner block hashes; without, nothing is."""
    ids = tokens(6 * B)
    prompt = list(ids[: 2 * B + B // 2]) + list(tokens(2 * B, seed=9))
    for partial in (True, False):
        store = local_store(partial_prefixes=partial)
        s = scope()
        store.put(s, snap(ids))
        got = await store.fetch(s, prompt, deadline=deadline_in(1))
        if partial:
            assert got is not None and got.token_ids == ids  # the engine keeps only the common prefix
        else:
            assert got is None
        other = await store.fetch(scope("beta"), prompt, deadline=deadline_in(1))
        assert other is None, "another tenant's scope never sees it"
        store.close()
