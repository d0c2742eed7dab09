"""A tenant's conversations are bounded in count, in stored bytes and in age (real SQLite, real MinIO)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from realm.runtime.api.errors import api_error
from realm.runtime.conversations import (
    Conversation,
    ConversationNotFound,
    ConversationQuotaExceeded,
    ConversationStore,
    Limits,
    Message,
)
from realm.runtime.conversations.models import new_id
from realm.runtime.conversations.s3_store import S3ConversationStore, make_client
from realm.runtime.conversations.sqlite_store import SqliteConversationStore
from realm.runtime.sandbox.abi import ErrorCode
from realm.runtime.sandbox.context import host_error


@pytest.fixture(params=["sqlite", "s3"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[ConversationStore] = []

    def build(limits: Limits) -> ConversationStore:
        if request.param == "sqlite":
            store: ConversationStore = SqliteConversationStore(tmp_path / f"c{len(made)}.sqlite", limits)
        else:
            b = request.getfixturevalue("s3_bucket")
            client = make_client(b.endpoint, b.region, b.access_key, b.secret_key)
            store = S3ConversationStore(client, b.bucket, f"p{len(made)}", limits)
        made.append(store)
        return store

    yield build
    for store in made:
        await store.close()


async def test_a_tenant_holds_at_most_max_conversations(make: Any) -> None:
    store = make(Limits(max_conversations=2))
    first = await store.create("acme")
    await store.create("acme")
    with pytest.raises(ConversationQuotaExceeded, match="at most 2 conversations"):
        await store.create("acme")
    await store.create("other")  # per tenant
    await store.delete("acme", first.id)
    await store.create("acme")


async def test_a_tenants_conversations_hold_at_most_max_total_bytes(make: Any) -> None:
    store = make(Limits(max_total_bytes=4096))
    c = await store.create("acme", messages=[Message(role="user", content="x" * 1500)])
    await store.create("acme", messages=[Message(role="user", content="y" * 1500)])
    with pytest.raises(ConversationQuotaExceeded, match="at most 4096 bytes in all"):
        await store.update(
            "acme", c.id, expected_version=None, append=[Message(role="user", content="z" * 1500)]
        )
    with pytest.raises(ConversationQuotaExceeded):
        await store.create("acme", messages=[Message(role="user", content="w" * 1500)])
    assert (await store.get("acme", c.id)).version == 1  # the refused append changed nothing


async def test_an_expired_conversation_reads_as_not_found_and_is_swept(tmp_path: Path) -> None:
    store = SqliteConversationStore(tmp_path / "c.sqlite", Limits(ttl_seconds=3600, max_conversations=1))
    old = int(time.time()) - 7200
    # Written through the backend's own insert, as if two hours ago (no clock to turn back).
    stale = Conversation(id=new_id(), tenant="acme", created_at=old, updated_at=old, version=1)
    store._insert(stale)
    with pytest.raises(ConversationNotFound):
        await store.get("acme", stale.id)
    store._insert(stale.model_copy(update={"id": new_id()}))
    assert (await store.list("acme")).data == ()  # swept, not listed
    await store.create("acme")  # the quota counts only live ones
    await store.close()


def test_over_quota_is_a_429_over_http_and_quota_exceeded_in_the_abi() -> None:
    e = ConversationQuotaExceeded("A tenant holds at most 2 conversations; delete some first.")
    err = api_error(e)
    assert (err.status, err.code) == (429, "conversation_quota_exceeded")
    assert host_error(e).code == ErrorCode.QUOTA_EXCEEDED
