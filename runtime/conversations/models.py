"""A tenant's conversations: the stored document, its ids, its limits and the store's errors.

One `Conversation` is one document, written whole with compare-and-swap on `version`: every
change (append, state, metadata, KV key) makes version + 1, and a writer that read version v
can only replace v. So two writers never lose each other's turn: the second one is told.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Ids sort newest first: "conv_" + 12 hex digits of (2**48 - creation time in ms) + 20 random
# url-safe characters (120 bits). The time part lets both backends list newest-first by key
# order alone (an S3 listing returns keys in ascending order); the random part makes an id
# impossible to guess, which is what keeps one tenant's ids useless to another even before the
# tenant check.
ID_PREFIX = "conv_"
ID_PATTERN = re.compile(r"^conv_[0-9a-f]{12}[A-Za-z0-9_-]{20}$")
_TIME_SPAN_MS = 1 << 48
# Tenant names as the Tenant resource allows them; they become S3 key segments and SQL values.
TENANT_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Role = Literal["system", "developer", "user", "assistant"]


def new_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    inverted = max(0, _TIME_SPAN_MS - 1 - ms)
    return f"{ID_PREFIX}{inverted:012x}{secrets.token_urlsafe(15)}"


def valid_id(conversation_id: str) -> bool:
    return bool(ID_PATTERN.fullmatch(conversation_id))


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"invalid tenant name {tenant!r}")
    return tenant


class ConversationError(Exception):
    """Base of what a store reports; `code` is the API's error code, `reason` the kind of failure in
    the serving layer's vocabulary (runtime/serving/errors.py), which the sandbox maps to ABI codes."""

    code = "conversation_error"
    reason = "conversation_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConversationNotFound(ConversationError):
    """No such conversation *for this tenant*: another tenant's id and a malformed one look the
    same, so an answer never tells whether an id exists elsewhere."""

    code = "conversation_not_found"
    reason = "conversation_not_found"

    def __init__(self, conversation_id: str) -> None:
        shown = conversation_id if len(conversation_id) <= 64 else conversation_id[:64] + "..."
        super().__init__(f"No conversation found with id '{shown}'.")
        self.conversation_id = conversation_id


class VersionConflict(ConversationError):
    code = "conversation_conflict"
    reason = "conversation_conflict"

    def __init__(self, conversation_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"Conversation '{conversation_id}' is at version {current}, not {expected}: another writer "
            "changed it. Read it again and retry."
        )
        self.conversation_id = conversation_id
        self.expected = expected
        self.current = current


class LimitExceeded(ConversationError):
    code = "conversation_too_large"
    reason = "conversation_too_large"


class ConversationQuotaExceeded(ConversationError):
    """A tenant holds as many conversations, or as many bytes of them, as it may: delete some first."""

    code = "conversation_quota_exceeded"
    reason = "quota_exceeded"


class InvalidConversation(ConversationError):
    """A change that would make the document invalid (e.g. metadata over OpenAI's limits)."""

    code = "invalid_value"
    reason = "invalid_request"


class StoreUnavailable(ConversationError):
    """The backing store failed (disk, network, S3 errors other than a lost race)."""

    code = "conversation_store_unavailable"
    reason = "conversation_store_unavailable"


DAY = 86_400


class Limits(BaseModel):
    """Per-conversation limits (the whole document must also fit one host-call result, 1 MiB) and
    per-tenant ones: how many conversations, how many stored bytes in all, and how long one lives after
    its last change (an expired one reads as not found and is swept)."""

    model_config = ConfigDict(frozen=True)

    max_messages: int = Field(1000, ge=1, le=100_000)
    max_bytes: int = Field(512 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_conversations: int = Field(1000, ge=1, le=1_000_000)
    max_total_bytes: int = Field(64 << 20, ge=1024, le=1 << 40)
    ttl_seconds: int | None = Field(90 * DAY, ge=60, le=3650 * DAY)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(..., max_length=1 << 20)
    name: str | None = Field(None, max_length=64)


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    tenant: str
    created_at: int  # unix seconds
    updated_at: int
    version: int = Field(..., ge=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    # Opaque to Realm: whatever a tenant's module keeps between turns (usually JSON text).
    state: str | None = None
    # The key of the KV-cache snapshot of the latest turn, set by the runtime, never by tenants.
    kv_key: str | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        # OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
        if len(v) > 16:
            raise ValueError("at most 16 metadata pairs are allowed")
        for key, value in v.items():
            if not 1 <= len(key) <= 64:
                raise ValueError("metadata keys must be 1 to 64 characters")
            if len(value) > 512:
                raise ValueError("metadata values must be at most 512 characters")
        return v

    def size_bytes(self) -> int:
        """What the limits count: message contents, state and metadata, UTF-8."""
        n = sum(len(m.content.encode()) + len(m.role) + len((m.name or "").encode()) for m in self.messages)
        n += len((self.state or "").encode())
        n += sum(len(k.encode()) + len(v.encode()) for k, v in self.metadata.items())
        return n

    def check(self, limits: Limits) -> Conversation:
        if len(self.messages) > limits.max_messages:
            raise LimitExceeded(
                f"A conversation holds at most {limits.max_messages} messages; this change would make "
                f"{len(self.messages)}."
            )
        size = self.size_bytes()
        if size > limits.max_bytes:
            raise LimitExceeded(
                f"A conversation holds at most {limits.max_bytes} bytes of messages, state and metadata; "
                f"this change would make {size}."
            )
        return self


class Page(BaseModel):
    """One page of a listing, newest first; `has_more` says whether `after=data[-1].id` has more."""

    model_config = ConfigDict(frozen=True)

    data: tuple[Conversation, ...]
    has_more: bool
