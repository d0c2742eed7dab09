"""A tenant's conversations as requests use them: the store (or ConversationsDisabled), and a chat
turn's history read when it begins and its recording when it ends (runtime/conversations/chat.py).

Every door names a tenant; the store never sees that name. `conversation_store` hands out the store
keyed by owner keys (the Tenant's namespace and uid under the identity secret, ServingState.owner), so a
same-named Tenant of another namespace, or one deleted and created again, finds none of these
conversations, and stored keys reveal no tenant name.

The store's own errors (ConversationError and its kinds) pass through unchanged: each door maps
them itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from realm.runtime.conversations import (
    UNSET,
    Conversation,
    ConversationStore,
    Limits,
    Message,
    Page,
    StoreUnavailable,
    Unset,
)
from realm.runtime.conversations.chat import ChatTurn, begin_turn, finish_turn

from .errors import ConversationsDisabled
from .state import ServingState


class OwnedConversations:
    """The store as a door uses it, by tenant name: each call goes to the store under the tenant's owner
    key. A tenant this runtime does not serve (gone in a reload) reaches nothing."""

    def __init__(self, store: ConversationStore, owners: Mapping[str, str]) -> None:
        self.store = store
        self.limits: Limits = store.limits
        self._owners = owners

    def _owner(self, tenant: str) -> str:
        owner = self._owners.get(tenant)
        if owner is None:
            raise StoreUnavailable(f"Tenant '{tenant}' is not served by this runtime.")
        return owner

    async def create(
        self,
        tenant: str,
        *,
        metadata: Mapping[str, str] | None = None,
        messages: Sequence[Message] = (),
        state: str | None = None,
    ) -> Conversation:
        return await self.store.create(self._owner(tenant), metadata=metadata, messages=messages, state=state)

    async def get(self, tenant: str, conversation_id: str) -> Conversation:
        return await self.store.get(self._owner(tenant), conversation_id)

    async def list(self, tenant: str, *, limit: int = 20, after: str | None = None) -> Page:
        return await self.store.list(self._owner(tenant), limit=limit, after=after)

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
        return await self.store.update(
            self._owner(tenant),
            conversation_id,
            expected_version=expected_version,
            append=append,
            state=state,
            metadata=metadata,
            kv_key=kv_key,
        )

    async def delete(self, tenant: str, conversation_id: str) -> None:
        await self.store.delete(self._owner(tenant), conversation_id)

    async def close(self) -> None:
        await self.store.close()


def conversation_store(state: ServingState) -> ConversationStore:
    if state.conversations is None:
        raise ConversationsDisabled(
            "Conversations are not enabled on this runtime.", code="conversations_unavailable"
        )
    return OwnedConversations(state.conversations, state.owners)


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
