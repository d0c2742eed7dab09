"""A chat turn against a stored conversation: read the history when the request starts, append the
new messages and the reply when it ends, compare-and-swap on the version that was read.

The reply was computed from the history as read. If another writer appended meanwhile, writing
this turn after theirs would record a reply to a conversation the model never saw; writing it
over theirs would lose their turn. So the turn is refused (VersionConflict) and the caller says
so: the client re-sends its message against the new history. Nothing is ever overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .models import Conversation, Message
from .store import UNSET, ConversationStore, Unset


@dataclass(frozen=True)
class ChatTurn:
    tenant: str  # as the store was asked: the turn is recorded under the same one
    conversation: Conversation  # as read when the request started
    new_messages: tuple[Message, ...]

    @property
    def prompt(self) -> tuple[Message, ...]:
        """What the model is to continue: the stored history, then the new messages."""
        return (*self.conversation.messages, *self.new_messages)


async def begin_turn(
    store: ConversationStore, tenant: str, conversation_id: str, new_messages: Sequence[Message]
) -> ChatTurn:
    conversation = await store.get(tenant, conversation_id)
    return ChatTurn(tenant, conversation, tuple(new_messages))


async def finish_turn(
    store: ConversationStore, turn: ChatTurn, reply: str, *, kv_key: str | Unset | None = UNSET
) -> Conversation:
    """Append the turn (its new messages and the assistant's reply) as one new version; `kv_key`
    (the KV snapshot of this turn) goes into the same write."""
    return await store.update(
        turn.tenant,
        turn.conversation.id,
        expected_version=turn.conversation.version,
        append=[*turn.new_messages, Message(role="assistant", content=reply)],
        kv_key=kv_key,
    )
