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
from pydantic import Field

from realm.runtime.conversations import UNSET, Conversation, ConversationError, ConversationStore, Unset
from realm.runtime.serving.conversations import conversation_store

from .errors import api_error
from .schemas import RequestBody, StoredTurnMessage
from .state import AppState

router = APIRouter()


class CreateConversation(RequestBody):
    metadata: dict[str, str] | None = None
    messages: list[StoredTurnMessage] = Field(default_factory=list)
    state: str | None = None


class UpdateConversation(RequestBody):
    """Absent fields stay as they are; `"state": null` clears the state."""

    metadata: dict[str, str] | None = None
    state: str | None = None
    expected_version: int | None = Field(None, ge=1)


class AppendMessages(RequestBody):
    messages: list[StoredTurnMessage] = Field(..., min_length=1)
    expected_version: int | None = Field(None, ge=1)


def _context(request: Request) -> tuple[ConversationStore, str]:
    state: AppState = request.app.state.realm
    # ConversationsDisabled, if raised, is rendered by the handler in errors.py.
    return conversation_store(state), request.state.tenant.name  # the tenant: set by the middleware


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
            tenant, metadata=body.metadata, messages=[m.stored() for m in body.messages], state=body.state
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
            tenant,
            conversation_id,
            expected_version=body.expected_version,
            append=[m.stored() for m in body.messages],
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
