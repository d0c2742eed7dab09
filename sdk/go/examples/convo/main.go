// Command convo continues a stored conversation with SmolLM2, one turn per invocation, and
// records the turn with compare-and-swap.
//
// Input: {"message": "...", "conversation"?: "conv_...", "expected_version"?: n}. Without a
// conversation it creates one. The turn (the user's message and the reply) is appended only if
// the conversation is still at the version the reply was computed from: when another writer
// got there first (ErrConflict), it reads the conversation again, recomputes the reply against
// the new history and tries once more, so nobody's turn is overwritten. `expected_version`
// pretends the conversation was read at that version (to show a conflict).
//
// Output: {"conversation", "version", "reply", "messages", "conflicts", "turns"}, or
// {"error": "not_found"} for an id this tenant does not have.
package main

import (
	"encoding/json"
	"errors"
	"strings"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() { realm.Run(run) }

type request struct {
	Message         string `json:"message"`
	Conversation    string `json:"conversation"`
	ExpectedVersion int64  `json:"expected_version"`
}

type response struct {
	Conversation string `json:"conversation"`
	Version      int64  `json:"version"`
	Reply        string `json:"reply"`
	Messages     int    `json:"messages"`
	Conflicts    int    `json:"conflicts"`
	Turns        int    `json:"turns"`
}

// state is what the module keeps in the conversation between turns.
type state struct {
	Turns int `json:"turns"`
}

// prompt is SmolLM2's chat template (ChatML) over the history and the new message.
func prompt(history []realm.Message, message string) string {
	var b strings.Builder
	b.WriteString("<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n")
	for _, m := range append(history, realm.Message{Role: "user", Content: message}) {
		b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
	}
	b.WriteString("<|im_start|>assistant\n")
	return b.String()
}

func reply(conv realm.Conversation, message string) (string, error) {
	g, err := realm.Generate(realm.GenerateParams{
		Model:     model,
		Prompt:    prompt(conv.Messages, message),
		MaxTokens: 32,
		Stop:      []string{"<|im_end|>"},
	})
	return strings.TrimSpace(g.Text), err
}

func turns(conv realm.Conversation) int {
	var s state
	if conv.State != nil {
		_ = json.Unmarshal([]byte(*conv.State), &s) // a state this module did not write counts as none
	}
	return s.Turns
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Message) == "" {
		return errors.New(`input needs a "message"`)
	}
	var conv realm.Conversation
	var err error
	if req.Conversation == "" {
		conv, err = realm.CreateConversation(realm.NewConversation{Metadata: map[string]string{"by": "convo"}})
	} else {
		conv, err = realm.GetConversation(req.Conversation)
	}
	if errors.Is(err, realm.ErrNotFound) {
		return realm.EmitJSON(map[string]string{"error": "not_found"})
	}
	if err != nil {
		return err
	}
	expected := conv.Version
	if req.ExpectedVersion > 0 {
		expected = req.ExpectedVersion
	}
	conflicts := 0
	for {
		text, err := reply(conv, req.Message)
		if err != nil {
			return err
		}
		next, _ := json.Marshal(state{Turns: turns(conv) + 1})
		s := string(next)
		updated, err := realm.PutConversation(conv.ID, realm.Change{
			ExpectedVersion: expected,
			Append:          []realm.Message{{Role: "user", Content: req.Message}, {Role: "assistant", Content: text}},
			SetState:        true,
			State:           &s,
		})
		if errors.Is(err, realm.ErrConflict) && conflicts == 0 {
			// Someone else's turn landed first: continue from theirs, never over it.
			conflicts++
			if conv, err = realm.GetConversation(conv.ID); err != nil {
				return err
			}
			expected = conv.Version
			continue
		}
		if err != nil {
			return err
		}
		return realm.EmitJSON(response{
			Conversation: updated.ID,
			Version:      updated.Version,
			Reply:        text,
			Messages:     len(updated.Messages),
			Conflicts:    conflicts,
			Turns:        turns(updated),
		})
	}
}

func main() {}
