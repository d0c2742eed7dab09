package realm

import (
	"encoding/json"
	"fmt"
)

// Conversations (ABI 1.1): the tenant's stored conversations, the same ones as the HTTP
// API's /v1/conversations. Every call is scoped to the invoking tenant: another tenant's id
// fails with ErrNotFound, exactly like an id that never existed.
//
// Every change makes Version + 1. PutConversation with an ExpectedVersion is a
// compare-and-swap: if another writer changed the conversation since it was read, the call
// fails with ErrConflict and nothing is written; read it again and redo the turn.

// Message is one message of a conversation.
type Message struct {
	Role    string `json:"role"` // "system", "developer", "user" or "assistant"
	Content string `json:"content"`
	Name    string `json:"name,omitempty"`
}

// Conversation is a stored conversation as the host returns it.
type Conversation struct {
	ID        string            `json:"id"`
	Version   int64             `json:"version"`
	CreatedAt int64             `json:"created_at"` // unix seconds
	UpdatedAt int64             `json:"updated_at"`
	Metadata  map[string]string `json:"metadata"`
	Messages  []Message         `json:"messages"`
	State     *string           `json:"state"`  // opaque to the runtime; nil when unset
	KVKey     *string           `json:"kv_key"` // the KV snapshot of the latest turn (read-only)
}

// NewConversation is what CreateConversation starts a conversation with.
type NewConversation struct {
	Metadata map[string]string `json:"metadata,omitempty"`
	Messages []Message         `json:"messages,omitempty"`
	State    *string           `json:"state,omitempty"`
}

// Change is one change applied by PutConversation.
type Change struct {
	// ExpectedVersion > 0: apply only if the conversation is still at this version (else
	// ErrConflict). 0: apply to whatever version is current (safe for a pure append).
	ExpectedVersion int64
	Append          []Message
	// SetState replaces the state with State (nil clears it); false keeps it.
	SetState bool
	State    *string
	// Metadata, when non-nil, replaces the metadata.
	Metadata map[string]string
}

// MarshalJSON writes the host's ConversationPut payload (without the id).
func (c Change) MarshalJSON() ([]byte, error) {
	return json.Marshal(c.payload(""))
}

func (c Change) payload(id string) map[string]any {
	p := map[string]any{"id": id, "append": c.Append}
	if c.Append == nil {
		p["append"] = []Message{}
	}
	if c.ExpectedVersion > 0 {
		p["expected_version"] = c.ExpectedVersion
	}
	if c.SetState {
		p["state"] = c.State // nil marshals as null: cleared
	}
	if c.Metadata != nil {
		p["metadata"] = c.Metadata
	}
	return p
}

// CreateConversation stores a new conversation (version 1) for this tenant.
func CreateConversation(n NewConversation) (Conversation, error) {
	req, err := json.Marshal(n)
	if err != nil {
		return Conversation{}, fmt.Errorf("realm: realm_conversation_create: %w", err)
	}
	return conversationResult("realm_conversation_create", hostConversationCreate(bytesPtr(req), uint32(len(req))))
}

// GetConversation reads one of this tenant's conversations.
func GetConversation(id string) (Conversation, error) {
	return conversationResult("realm_conversation_get", hostConversationGet(strPtr(id), uint32(len(id))))
}

// PutConversation applies c to conversation id as version + 1 and returns the conversation
// as it now is. With c.ExpectedVersion set it fails with ErrConflict when another writer
// got there first.
func PutConversation(id string, c Change) (Conversation, error) {
	req, err := json.Marshal(c.payload(id))
	if err != nil {
		return Conversation{}, fmt.Errorf("realm: realm_conversation_put: %w", err)
	}
	return conversationResult("realm_conversation_put", hostConversationPut(bytesPtr(req), uint32(len(req))))
}

// DeleteConversation deletes one of this tenant's conversations.
func DeleteConversation(id string) error {
	if rc := hostConversationDelete(strPtr(id), uint32(len(id))); rc != 0 {
		return newHostError("realm_conversation_delete", ErrorCode(-rc))
	}
	return nil
}

func conversationResult(op string, n int64) (Conversation, error) {
	var c Conversation
	res, err := takeResult(op, n)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(res, &c); err != nil {
		return c, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return c, nil
}
