"""The conversation store, one suite for both backends: SQLite on a temporary file and S3 on a
real MinIO over HTTP (tests/s3server.py, conftest's `s3_bucket`: a fresh bucket per test; the S3
cases skip, saying how to build MinIO, where its binary is missing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from realm.runtime.conversations import (
    ConversationNotFound,
    ConversationStore,
    InvalidConversation,
    LimitExceeded,
    Limits,
    Message,
    VersionConflict,
)
from realm.runtime.conversations.models import new_id, valid_id
from realm.runtime.conversations.s3_store import S3ConversationStore, make_client
from realm.runtime.conversations.sqlite_store import SqliteConversationStore

USER = Message(role="user", content="Hello")
REPLY = Message(role="assistant", content="Hi! How can I help?")
LIMITS = Limits(max_messages=6, max_bytes=4096)


def s3_store(bucket: Any, limits: Limits | None = None) -> S3ConversationStore:
    """The store on `bucket` (an s3server.S3Bucket) with the runtime's own client configuration."""
    client = make_client(bucket.endpoint, bucket.region, bucket.access_key, bucket.secret_key)
    return S3ConversationStore(client, bucket.bucket, "realm", limits)


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ConversationStore:
    if kind == "sqlite":
        return SqliteConversationStore(tmp_path / "c.sqlite", LIMITS)
    return s3_store(request.getfixturevalue("s3_bucket"), LIMITS)


@pytest.fixture(params=["sqlite", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    s = _open(request.param, tmp_path, request)
    yield s
    await s.close()


async def test_create_get_append(store: ConversationStore) -> None:
    c = await store.create("acme", metadata={"topic": "greeting"}, messages=[USER])
    assert valid_id(c.id) and c.version == 1 and c.tenant == "acme"
    assert (await store.get("acme", c.id)) == c
    c2 = await store.update("acme", c.id, expected_version=1, append=[REPLY])
    assert c2.version == 2 and c2.messages == (USER, REPLY)
    assert c2.created_at == c.created_at and c2.metadata == {"topic": "greeting"}
    assert (await store.get("acme", c.id)) == c2


async def test_cas_refuses_a_stale_writer(store: ConversationStore) -> None:
    c = await store.create("acme", messages=[USER])
    await store.update("acme", c.id, expected_version=1, append=[REPLY])
    with pytest.raises(VersionConflict) as info:
        await store.update("acme", c.id, expected_version=1, append=[Message(role="user", content="lost?")])
    assert (info.value.expected, info.value.current) == (1, 2)
    assert (await store.get("acme", c.id)).messages == (USER, REPLY)  # nothing overwritten


async def test_concurrent_writers_lose_nothing(store: ConversationStore) -> None:
    """Ten appends at once with the same expected version: exactly one wins, the rest are told.
    Ten unconditional appends at once: all ten land."""
    c = await store.create("acme", state="s0")
    outcomes = await asyncio.gather(
        *(store.update("acme", c.id, expected_version=1, state=f"s{i}", append=[]) for i in range(1, 11)),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(wins) == 1 and all(isinstance(o, VersionConflict) for o in outcomes if o not in wins)
    assert (await store.get("acme", c.id)).state == wins[0].state
    big = Limits(max_messages=50, max_bytes=100_000)
    store.limits = big  # type: ignore[misc]
    await asyncio.gather(
        *(
            store.update("acme", c.id, expected_version=None, append=[Message(role="user", content=str(i))])
            for i in range(10)
        )
    )
    final = await store.get("acme", c.id)
    assert sorted(int(m.content) for m in final.messages) == list(range(10))
    assert final.version == 12


async def test_state_metadata_and_kv_key(store: ConversationStore) -> None:
    c = await store.create("acme")
    c = await store.update("acme", c.id, expected_version=1, state='{"step": 2}', kv_key="kv/acme/abc")
    assert (c.state, c.kv_key, c.version) == ('{"step": 2}', "kv/acme/abc", 2)
    c = await store.update("acme", c.id, expected_version=2, metadata={"a": "b"})
    assert (c.state, c.kv_key, c.metadata) == ('{"step": 2}', "kv/acme/abc", {"a": "b"})
    c = await store.update("acme", c.id, expected_version=3, state=None, kv_key=None)
    assert (c.state, c.kv_key) == (None, None)
    with pytest.raises(InvalidConversation):
        await store.update("acme", c.id, expected_version=4, metadata={f"k{i}": "v" for i in range(17)})


async def test_tenants_are_isolated(store: ConversationStore) -> None:
    mine = await store.create("acme", messages=[USER])
    with pytest.raises(ConversationNotFound):
        await store.get("other", mine.id)
    with pytest.raises(ConversationNotFound):
        await store.update("other", mine.id, expected_version=1, append=[REPLY])
    with pytest.raises(ConversationNotFound):
        await store.update("other", mine.id, expected_version=None, kv_key="kv/other/x")
    with pytest.raises(ConversationNotFound):
        await store.delete("other", mine.id)
    assert (await store.list("other")).data == ()
    # Guessed, malformed and path-like ids are all simply not found.
    for guess in (new_id(), "conv_", "../acme/conversations/" + mine.id, mine.id + "x", mine.id.upper()):
        with pytest.raises(ConversationNotFound):
            await store.get("other", guess)
    assert await store.get("acme", mine.id) == mine


async def test_list_newest_first_paginated(store: ConversationStore) -> None:
    ids = []
    for i in range(5):
        ids.append((await store.create("acme", metadata={"n": str(i)})).id)
        await asyncio.sleep(0.002)  # distinct milliseconds: the id's time part orders them
    await store.create("other")
    page = await store.list("acme", limit=2)
    assert [c.id for c in page.data] == ids[::-1][:2] and page.has_more
    page2 = await store.list("acme", limit=2, after=page.data[-1].id)
    assert [c.id for c in page2.data] == ids[::-1][2:4] and page2.has_more
    page3 = await store.list("acme", limit=2, after=page2.data[-1].id)
    assert [c.id for c in page3.data] == ids[:1] and not page3.has_more


async def test_delete(store: ConversationStore) -> None:
    c = await store.create("acme")
    await store.delete("acme", c.id)
    with pytest.raises(ConversationNotFound):
        await store.get("acme", c.id)
    with pytest.raises(ConversationNotFound):
        await store.delete("acme", c.id)
    with pytest.raises(ConversationNotFound):
        await store.update("acme", c.id, expected_version=None, append=[USER])


async def test_limits(store: ConversationStore) -> None:
    c = await store.create("acme", messages=[USER] * 5)
    c = await store.update("acme", c.id, expected_version=None, append=[REPLY])
    with pytest.raises(LimitExceeded, match="at most 6 messages"):
        await store.update("acme", c.id, expected_version=None, append=[USER])
    with pytest.raises(LimitExceeded, match="4096 bytes"):
        await store.create("acme", state="x" * 5000)
    assert (await store.get("acme", c.id)).version == 2


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first = SqliteConversationStore(path)
    c = await first.create("acme", messages=[USER])
    await first.update("acme", c.id, expected_version=1, append=[REPLY])
    await first.close()
    second = SqliteConversationStore(path)
    assert (await second.get("acme", c.id)).messages == (USER, REPLY)
    await second.close()
