"""A tenant's conversations as requests use them: the store (or ConversationsDisabled), and a chat
turn's history read when it begins and its recording when it ends (runtime/conversations/chat.py).

The store's own errors (ConversationError and its kinds) pass through unchanged: each door maps
them itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from realm.runtime.conversations import UNSET, Conversation, ConversationStore, Message, Unset
from realm.runtime.conversations.chat import ChatTurn, begin_turn, finish_turn

from .errors import ConversationsDisabled
from .state import ServingState


def conversation_store(state: ServingState) -> ConversationStore:
    if state.conversations is None:
        raise ConversationsDisabled(
            "Conversations are not enabled on this runtime.", code="conversations_unavailable"
        )
    return state.conversations


async def begin_chat_turn(
    state: ServingState, tenant: str, conversation_id: str, new: Sequence[Message]
) -> ChatTurn:
    """The stored history the new messages continue."""
    return await begin_turn(conversation_store(state), tenant, conversation_id, new)


async def finish_chat_turn(
    state: ServingState, turn: ChatTurn, reply: str, *, kv_key: str | Unset | None = UNSET
) -> Conversation:
    """Record the turn (and `kv_key`, the KV snapshot of it, in the same write). A conflict (another
    writer appended since the turn began) is a VersionConflict: the turn is not recorded, nobody's
    turn is overwritten."""
    return await finish_turn(conversation_store(state), turn, reply, kv_key=kv_key)
