"""Stores and cache scopes are keyed by a tenant's namespace and uid (its owner key), never by its name:
two runtimes of two namespaces, each with a Tenant `acme`, share one conversation store (SQLite here, S3
below) and see nothing of each other's; a Tenant created again under its old name (a new uid) neither.
Real stores (SQLite, MinIO via tests/s3server.py), real KV tiers; no engine is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime
from repo_paths import WAT

from realm.runtime.conversations import ConversationNotFound, ConversationStore
from realm.runtime.conversations.s3_store import S3ConversationStore
from realm.runtime.conversations.sqlite_store import SqliteConversationStore
from realm.runtime.engines.base import KV_FINGERPRINT, MODEL_DIGEST, KVSnapshot, ModelInfo
from realm.runtime.kvstore.snapshots import KVSnapshots
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox.runner import Sandbox
from realm.runtime.serving.conversations import conversation_store
from realm.runtime.serving.modules import deploy_module
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.identity import NamespaceIdentity
from realm.runtime.spec.runtime_config import KVSnapshotsConfig, TenantEntry

ROOT = "installation-secret-of-this-test"


def runtime(namespace: str, uid: str, store: ConversationStore) -> ServingState:
    """One namespace's runtime serving Tenant `acme`, as the operator would publish it."""
    state = ServingState(models={}, metrics=Metrics(), identity=NamespaceIdentity.of(ROOT, namespace))
    state.conversations = store
    state.apply_tenants([TenantEntry(name="acme", namespace=namespace, uid=uid)])
    return state


async def _isolated(store: ConversationStore) -> None:
    team_a = runtime("team-a", "uid-a", store)
    team_b = runtime("team-b", "uid-b", store)
    mine = await conversation_store(team_a).create("acme", metadata={"owner": "team-a"})
    theirs = conversation_store(team_b)
    assert (await theirs.list("acme")).data == ()
    with pytest.raises(ConversationNotFound):
        await theirs.get("acme", mine.id)
    with pytest.raises(ConversationNotFound):
        await theirs.update("acme", mine.id, expected_version=None, metadata={"owner": "team-b"})
    with pytest.raises(ConversationNotFound):
        await theirs.delete("acme", mine.id)
    assert (await conversation_store(team_a).get("acme", mine.id)).metadata == {"owner": "team-a"}


async def test_same_named_tenants_of_two_namespaces_share_no_conversations_sqlite(tmp_path: Path) -> None:
    await _isolated(SqliteConversationStore(tmp_path / "c.sqlite"))


async def test_same_named_tenants_of_two_namespaces_share_no_conversations_s3(s3_bucket: Any) -> None:
    await _isolated(S3ConversationStore(s3_bucket.client(), s3_bucket.bucket, "realm"))


async def test_a_tenant_created_again_under_its_name_sees_none_of_the_old_ones(tmp_path: Path) -> None:
    store = SqliteConversationStore(tmp_path / "c.sqlite")
    old = runtime("team-a", "uid-1", store)
    created = await conversation_store(old).create("acme")
    old.apply_tenants([TenantEntry(name="acme", namespace="team-a", uid="uid-2")])  # deleted, created again
    assert (await conversation_store(old).list("acme")).data == ()
    with pytest.raises(ConversationNotFound):
        await conversation_store(old).get("acme", created.id)


def test_stored_keys_name_no_tenant(tmp_path: Path) -> None:
    state = runtime("team-a", "uid-a", SqliteConversationStore(tmp_path / "c.sqlite"))
    assert "acme" not in state.owner("acme")
    assert "team-a" not in state.owner("acme")


def test_a_tenant_of_another_namespace_is_not_served() -> None:
    state = ServingState(models={}, metrics=Metrics(), identity=NamespaceIdentity.of(ROOT, "team-a"))
    state.apply_tenants([TenantEntry(name="acme", namespace="team-b", uid="u")])
    assert state.tenants == {}
    assert state.owners == {}


INFO = ModelInfo(
    name="m",
    engine="llamacpp",
    version="v1",
    context_length=512,
    vocab_size=1000,
    max_batch=1,
    has_chat_template=False,
    metadata={KV_FINGERPRINT: "fp", MODEL_DIGEST: "digest"},
)


async def test_a_cached_prefix_is_found_by_its_owner_only(tmp_path: Path) -> None:
    """The prefix cache (memory tier): what `cached_tokens` would reveal to a same-named tenant elsewhere."""
    kv = KVSnapshots(
        KVSnapshotsConfig(memory_bytes=1 << 20, disk_bytes=0, min_tokens=64), tmp_path, secret="kv-secret"
    )
    try:
        a = NamespaceIdentity.of(ROOT, "team-a").owner_key("uid-a")
        b = NamespaceIdentity.of(ROOT, "team-b").owner_key("uid-b")
        prompt = list(range(128))
        assert kv.keep(a, None, INFO, KVSnapshot(tuple(prompt), b"kv" * 64, "fp")) is not None
        assert await kv.restore(a, None, INFO, [*prompt, 7]) is not None
        assert await kv.restore(b, None, INFO, [*prompt, 7]) is None
    finally:
        kv.close()


async def test_a_tenant_created_again_does_not_inherit_the_old_ones_module(tmp_path: Path) -> None:
    """A module uploaded by `acme` (uid-1) is gone once the config says `acme` is uid-2."""
    echo = bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text()))
    state = runtime("team-a", "uid-1", SqliteConversationStore(tmp_path / "c.sqlite"))
    state.sandbox = Sandbox(tmp_path / "cache")
    try:
        await deploy_module(state, "acme", echo)
        state.apply_tenants([TenantEntry(name="acme", namespace="team-a", uid="uid-1")])  # unchanged
        assert state.sandbox.current("acme") is not None
        state.apply_tenants([TenantEntry(name="acme", namespace="team-a", uid="uid-2")])
        assert state.sandbox.current("acme") is None
    finally:
        state.sandbox.close()
