"""The conversation store: one interface, two backends (SQLite embedded, S3 in a cluster).

Every method takes the tenant explicitly and every lookup is scoped by it: a backend stores a
conversation under (tenant, id), so another tenant's id is simply absent and reads as
`ConversationNotFound`, exactly like an id that never existed.

Backends implement five synchronous primitives on whole documents (read with a CAS token,
insert-if-absent, replace-if-token-matches, delete, list a page); `CasStore` builds the
versioned operations on them once and runs them in a worker thread, because both sqlite3 and
boto3 block.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import enum
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, ParamSpec, Protocol, TypeVar

from pydantic import ValidationError

from .models import (
    Conversation,
    ConversationNotFound,
    ConversationQuotaExceeded,
    InvalidConversation,
    Limits,
    Message,
    Page,
    StoreUnavailable,
    VersionConflict,
    check_tenant,
    new_id,
    valid_id,
)

P = ParamSpec("P")
R = TypeVar("R")
Token = TypeVar("Token")  # what a backend compares-and-swaps on: a version, an ETag

MAX_PAGE = 100
# An append without an expected version re-reads and retries when it loses a race; this many
# lost races in a row means something is wrong (or hopelessly contended).
_UNCONDITIONAL_RETRIES = 16


class Stored(NamedTuple):
    """One stored conversation as a listing sees it, without reading it."""

    id: str
    bytes: int  # the document as stored
    changed_at: float  # unix seconds of its last write


class Unset(enum.Enum):
    UNSET = "unset"


UNSET = Unset.UNSET


class ConversationStore(Protocol):
    """What the API, the chat endpoint and the tenant ABI use. Raises ConversationError subclasses."""

    limits: Limits

    async def create(
        self,
        tenant: str,
        *,
        metadata: Mapping[str, str] | None = None,
        messages: Sequence[Message] = (),
        state: str | None = None,
    ) -> Conversation: ...

    async def get(self, tenant: str, conversation_id: str) -> Conversation: ...

    async def list(self, tenant: str, *, limit: int = 20, after: str | None = None) -> Page: ...

    async def update(
        self,
        tenant: str,
        conversation_id: str,
        *,
        expected_version: int | None,
        append: Sequence[Message] = (),
        state: str | Unset | None = UNSET,
        metadata: Mapping[str, str] | Unset = UNSET,
        kv_key: str | Unset | None = UNSET,
    ) -> Conversation:
        """Apply a change as version + 1. With `expected_version`, only if the conversation is
        still at that version (else VersionConflict); without it, the change is applied to
        whatever version is current (a pure append loses nothing by doing so)."""
        ...

    async def delete(self, tenant: str, conversation_id: str) -> None: ...

    async def close(self) -> None: ...


class CasStore(abc.ABC, Generic[Token]):
    """The versioned operations, written once over a backend's compare-and-swap primitives."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    # ---- what a backend provides (blocking; called in a worker thread) -------------------------

    @abc.abstractmethod
    def _read(self, tenant: str, conversation_id: str) -> tuple[Conversation, Token] | None: ...

    @abc.abstractmethod
    def _insert(self, conversation: Conversation) -> None:
        """Store a new document; the id must not exist yet."""

    @abc.abstractmethod
    def _replace(self, conversation: Conversation, token: Token) -> bool:
        """Replace the document if it still has `token`; False when another writer got there first
        (or it was deleted meanwhile)."""

    @abc.abstractmethod
    def _delete(self, tenant: str, conversation_id: str) -> bool: ...

    @abc.abstractmethod
    def _list(self, tenant: str, limit: int, after: str | None) -> list[Conversation]:
        """Up to `limit` conversations with ids greater than `after`, in id order (newest first)."""

    @abc.abstractmethod
    def _usage(self, tenant: str) -> list[Stored]:
        """Every conversation of the tenant (expired ones included), from a listing."""

    def _close(self) -> None:
        return None

    # ---- the interface ---------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        *,
        metadata: Mapping[str, str] | None = None,
        messages: Sequence[Message] = (),
        state: str | None = None,
    ) -> Conversation:
        check_tenant(tenant)
        now = int(time.time())
        conversation = _build(
            id=new_id(),
            tenant=tenant,
            created_at=now,
            updated_at=now,
            version=1,
            metadata=dict(metadata or {}),
            messages=tuple(messages),
            state=state,
        ).check(self.limits)
        await self._run(self._insert_within_quota, conversation)
        return conversation

    async def get(self, tenant: str, conversation_id: str) -> Conversation:
        return await self._run(self._get, tenant, conversation_id)

    async def list(self, tenant: str, *, limit: int = 20, after: str | None = None) -> Page:
        check_tenant(tenant)
        limit = max(1, min(limit, MAX_PAGE))
        if after is not None and not valid_id(after):
            raise ConversationNotFound(after)
        found = await self._run(self._list_live, tenant, limit + 1, after)
        return Page(data=tuple(found[:limit]), has_more=len(found) > limit)

    async def update(
        self,
        tenant: str,
        conversation_id: str,
        *,
        expected_version: int | None,
        append: Sequence[Message] = (),
        state: str | Unset | None = UNSET,
        metadata: Mapping[str, str] | Unset = UNSET,
        kv_key: str | Unset | None = UNSET,
    ) -> Conversation:
        changes: dict[str, Any] = {}
        if not isinstance(state, Unset):
            changes["state"] = state
        if not isinstance(metadata, Unset):
            changes["metadata"] = dict(metadata)
        if not isinstance(kv_key, Unset):
            changes["kv_key"] = kv_key
        return await self._run(
            self._update, tenant, conversation_id, expected_version, tuple(append), changes
        )

    async def delete(self, tenant: str, conversation_id: str) -> None:
        check_tenant(tenant)
        if not valid_id(conversation_id) or not await self._run(self._delete, tenant, conversation_id):
            raise ConversationNotFound(conversation_id)

    async def close(self) -> None:
        await self._run(self._close)

    # ---- shared logic (in the worker thread) -----------------------------------------------

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # Per-tenant quotas and expiry. Checked against a listing made just before the write: two writes
    # racing may both pass it, so a tenant may briefly hold a little more than its quota.

    def _expired(self, changed_at: float, now: float) -> bool:
        ttl = self.limits.ttl_seconds
        return ttl is not None and changed_at < now - ttl

    def _sweep(self, tenant: str) -> builtins.list[Stored]:
        """Delete the tenant's expired conversations; the live ones."""
        now = time.time()
        live: builtins.list[Stored] = []
        for entry in self._usage(tenant):
            if self._expired(entry.changed_at, now):
                self._delete(tenant, entry.id)
            else:
                live.append(entry)
        return live

    def _check_quota(self, tenant: str, stored: Conversation, replacing: str | None) -> None:
        live = self._sweep(tenant)
        count = len(live) + (0 if replacing is not None else 1)
        if count > self.limits.max_conversations:
            raise ConversationQuotaExceeded(
                f"A tenant holds at most {self.limits.max_conversations} conversations; delete some first."
            )
        total = sum(e.bytes for e in live if e.id != replacing) + len(stored.model_dump_json().encode())
        if total > self.limits.max_total_bytes:
            raise ConversationQuotaExceeded(
                f"A tenant's conversations hold at most {self.limits.max_total_bytes} bytes in all; this "
                f"change would make {total}. Delete some first."
            )

    def _insert_within_quota(self, conversation: Conversation) -> None:
        self._check_quota(conversation.tenant, conversation, None)
        self._insert(conversation)

    def _list_live(self, tenant: str, limit: int, after: str | None) -> builtins.list[Conversation]:
        self._sweep(tenant)
        return self._list(tenant, limit, after)

    def _get(self, tenant: str, conversation_id: str) -> Conversation:
        return self._get_with_token(tenant, conversation_id)[0]

    def _get_with_token(self, tenant: str, conversation_id: str) -> tuple[Conversation, Token]:
        check_tenant(tenant)
        if not valid_id(conversation_id):
            raise ConversationNotFound(conversation_id)
        found = self._read(tenant, conversation_id)
        # The tenant check on the document too: a backend bug, or a hand-copied object, must not
        # hand one tenant's conversation to another.
        if found is None or found[0].tenant != tenant or found[0].id != conversation_id:
            raise ConversationNotFound(conversation_id)
        if self._expired(found[0].updated_at, time.time()):
            self._delete(tenant, conversation_id)
            raise ConversationNotFound(conversation_id)
        return found

    def _update(
        self,
        tenant: str,
        conversation_id: str,
        expected_version: int | None,
        append: tuple[Message, ...],
        changes: dict[str, Any],
    ) -> Conversation:
        for _ in range(_UNCONDITIONAL_RETRIES):
            current, token = self._get_with_token(tenant, conversation_id)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflict(conversation_id, expected_version, current.version)
            fields = current.model_dump()
            fields.update(changes)
            fields["messages"] = (*current.messages, *append)
            fields["version"] = current.version + 1
            fields["updated_at"] = max(int(time.time()), current.updated_at)
            updated = _build(**fields).check(self.limits)
            if len(updated.model_dump_json()) > len(current.model_dump_json()):
                self._check_quota(tenant, updated, conversation_id)
            if self._replace(updated, token):
                return updated
            if expected_version is not None:
                # Lost the race between our read and our write: report the version that won.
                latest = self._read(tenant, conversation_id)
                if latest is None:
                    raise ConversationNotFound(conversation_id)
                raise VersionConflict(conversation_id, expected_version, latest[0].version)
        raise StoreUnavailable(f"Conversation '{conversation_id}' is changing too fast to append to.")


def _build(**fields: Any) -> Conversation:
    try:
        return Conversation.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidConversation(f"{where}: {first['msg']}" if where else str(first["msg"])) from None
