"""Tenants' conversations: stored histories the chat endpoint and tenant modules continue.

`open_store(config)` gives the configured `ConversationStore`: SQLite in one local file by
default, S3 in a cluster (s3_store.py says why S3).
"""

from __future__ import annotations

import os
from pathlib import Path

from realm.runtime.spec.runtime_config import ConversationsConfig

from .models import (
    Conversation,
    ConversationError,
    ConversationNotFound,
    ConversationQuotaExceeded,
    InvalidConversation,
    LimitExceeded,
    Limits,
    Message,
    Page,
    StoreUnavailable,
    VersionConflict,
)
from .store import UNSET, ConversationStore, Unset

__all__ = [
    "UNSET",
    "Conversation",
    "ConversationError",
    "ConversationNotFound",
    "ConversationQuotaExceeded",
    "ConversationStore",
    "InvalidConversation",
    "LimitExceeded",
    "Limits",
    "Message",
    "Page",
    "StoreUnavailable",
    "Unset",
    "VersionConflict",
    "open_store",
]


def open_store(config: ConversationsConfig, home: Path) -> ConversationStore:
    """The store `config` names; `home` is the runtime's data folder (the SQLite default's place)."""
    limits = Limits(
        max_messages=config.max_messages,
        max_bytes=config.max_bytes,
        max_conversations=config.max_conversations,
        max_total_bytes=config.max_total_bytes,
        ttl_seconds=config.ttl_seconds,
    )
    if config.backend == "sqlite":
        from .sqlite_store import SqliteConversationStore

        path = Path(config.path).expanduser() if config.path else home / "conversations.sqlite"
        return SqliteConversationStore(path, limits)
    from .s3_store import S3ConversationStore, make_client

    bucket = os.environ.get("REALM_S3_BUCKET") or config.bucket
    if not bucket:
        raise ValueError(
            "conversations.backend is s3 but no bucket is set (conversations.bucket or REALM_S3_BUCKET)"
        )
    client = make_client(
        os.environ.get("REALM_S3_ENDPOINT") or config.endpoint,
        os.environ.get("REALM_S3_REGION") or config.region,
    )
    store = S3ConversationStore(client, bucket, config.prefix, limits)
    store.verify_at_start()  # a server that ignores conditional writes stops the runtime here
    return store
