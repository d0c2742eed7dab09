"""Conversations over HTTP: a tenant's stored chat histories, which `/v1/chat/completions` continues
when its body names one (`"conversation": "<id>"`).

    POST   /v1/conversations                    {metadata?, messages?, state?}         -> conversation
    GET    /v1/conversations?limit=&after=      newest first                           -> list
    GET    /v1/conversations/{id}                                                      -> conversation
    POST   /v1/conversations/{id}               {metadata?, state?, expected_version?}  -> conversation
    POST   /v1/conversations/{id}/messages      {messages, expected_version?}          -> conversation
    DELETE /v1/conversations/{id}                                                      -> {deleted: true}

The API key's tenant scopes everything: another tenant's conversation id answers 404, exactly
like one that never existed. Every change makes `version` + 1; with `expected_version` a change
applies only to that version, else 409 `conversation_conflict` (nothing is overwritten).

A chat turn's prompt is the whole stored history plus the new messages; nothing is truncated, so
a conversation that outgrows the model's context gets 400 `context_length_exceeded`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from realm.runtime.conversations import (
    UNSET,
    Conversation,
    ConversationError,
    ConversationNotFound,
    ConversationStore,
    InvalidConversation,
    LimitExceeded,
    StoreUnavailable,
    Unset,
    VersionConflict,
)
from realm.runtime.conversations import Message as StoredMessage
from realm.runtime.conversations.chat import ChatTurn, begin_turn, finish_turn

from .errors import APIError
from .schemas import Message
from .state import AppState

router = APIRouter()


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None = None
    messages: list[Message] = Field(default_factory=list)
    state: str | None = None


class UpdateConversation(BaseModel):
    """Absent fields stay as they are; `"state": null` clears the state."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None = None
    state: str | None = None
    expected_version: int | None = Field(None, ge=1)


class AppendMessages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(..., min_length=1)
    expected_version: int | None = Field(None, ge=1)


def api_error(e: ConversationError, *, param: str | None = None) -> APIError:
    if isinstance(e, ConversationNotFound):
        return APIError(404, e.message, code=e.code, param=param)
    if isinstance(e, VersionConflict):
        return APIError(409, e.message, code=e.code, param="expected_version" if param is None else param)
    if isinstance(e, LimitExceeded | InvalidConversation):
        return APIError(400, e.message, code=e.code, param=param)
    if isinstance(e, StoreUnavailable):
        return APIError(503, e.message, type="service_unavailable", code=e.code)
    return APIError(500, e.message, type="server_error", code=e.code)


def _store(state: AppState) -> ConversationStore:
    if state.conversations is None:
        raise APIError(
            503,
            "Conversations are not enabled on this runtime.",
            type="service_unavailable",
            code="conversations_unavailable",
        )
    return state.conversations


def _context(request: Request) -> tuple[ConversationStore, str]:
    state: AppState = request.app.state.realm
    return _store(state), request.state.tenant.name  # the tenant: set by the auth middleware


def stored(messages: list[Message]) -> list[StoredMessage]:
    """Request messages as stored: text parts joined into one string."""
    return [StoredMessage(role=m.role, content=m.text(), name=m.name) for m in messages]


def conversation_object(c: Conversation, *, messages: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "object": "conversation",
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "version": c.version,
        "metadata": c.metadata,
        "message_count": len(c.messages),
        "state": c.state,
        "kv_key": c.kv_key,
    }
    if messages:
        out["messages"] = [m.model_dump(exclude_none=True) for m in c.messages]
    return out


@router.post("/v1/conversations")
async def create_conversation(body: CreateConversation, request: Request) -> dict[str, Any]:
    store, tenant = _context(request)
    try:
        c = await store.create(
            tenant, metadata=body.metadata, messages=stored(body.messages), state=body.state
        )
    except ConversationError as e:
        raise api_error(e) from e
    return conversation_object(c)


@router.get("/v1/conversations")
async def list_conversations(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, max_length=128),
) -> dict[str, Any]:
    store, tenant = _context(request)
    try:
        page = await store.list(tenant, limit=limit, after=after)
    except ConversationError as e:
        raise api_error(e, param="after") from e
    data = [conversation_object(c, messages=False) for c in page.data]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    store, tenant = _context(request)
    try:
        return conversation_object(await store.get(tenant, conversation_id))
    except ConversationError as e:
        raise api_error(e) from e


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversation, request: Request
) -> dict[str, Any]:
    store, tenant = _context(request)
    given = body.model_fields_set
    state: str | Unset | None = body.state if "state" in given else UNSET
    metadata: dict[str, str] | Unset = body.metadata if body.metadata is not None else UNSET
    try:
        c = await store.update(
            tenant, conversation_id, expected_version=body.expected_version, state=state, metadata=metadata
        )
    except ConversationError as e:
        raise api_error(e) from e
    return conversation_object(c)


@router.post("/v1/conversations/{conversation_id}/messages")
async def append_messages(conversation_id: str, body: AppendMessages, request: Request) -> dict[str, Any]:
    store, tenant = _context(request)
    try:
        c = await store.update(
            tenant, conversation_id, expected_version=body.expected_version, append=stored(body.messages)
        )
    except ConversationError as e:
        raise api_error(e) from e
    return conversation_object(c)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    store, tenant = _context(request)
    try:
        await store.delete(tenant, conversation_id)
    except ConversationError as e:
        raise api_error(e) from e
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


# ---- the chat endpoint's side (routes_openai.py calls these) ----------------------------------


async def begin_chat_turn(state: AppState, tenant: str, conversation_id: str, new: list[Message]) -> ChatTurn:
    """The stored history plus the request's messages, or a 404 naming the `conversation` param."""
    try:
        return await begin_turn(_store(state), tenant, conversation_id, stored(new))
    except ConversationError as e:
        raise api_error(e, param="conversation") from e


def prompt_messages(turn: ChatTurn) -> list[Message]:
    # Not validated again: a stored reply may be empty (a model that stopped at once), which a
    # request's message may not be, and it is history now, not input.
    return [Message.model_construct(role=m.role, content=m.content, name=m.name) for m in turn.prompt]


async def finish_chat_turn(
    state: AppState, turn: ChatTurn, reply: str, *, kv_key: str | Unset | None = UNSET
) -> dict[str, Any]:
    """Record the turn (and `kv_key`, the KV snapshot of it, in the same write); what the response
    says about the conversation (`{"id", "version"}`). A conflict (another writer appended since
    the request began) is a 409 `conversation_conflict`: the turn is not recorded, nobody's turn
    is overwritten (runtime/conversations/chat.py)."""
    try:
        c = await finish_turn(_store(state), turn, reply, kv_key=kv_key)
    except ConversationError as e:
        raise api_error(e, param="conversation") from e
    return {"id": c.id, "version": c.version}
