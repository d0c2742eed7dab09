// Command json_extract pulls fields out of free text into JSON that a schema fixes: the host's
// constraint (realm.JSONSchema) makes the output parse and validate, whatever the model.
//
// Input {"text": "...", "schema"?: {...}} (the default schema: name, age, city); output
// {"data": {...}, "completion_tokens": n}.
package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

// defaultSchema is a person: every field required, nothing else.
const defaultSchema = `{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},` +
	`"city":{"type":"string"}},"required":["name","age","city"],"additionalProperties":false}`

func init() { realm.Run(run) }

type request struct {
	Text   string          `json:"text"`
	Schema json.RawMessage `json:"schema"`
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if req.Text == "" {
		return errors.New(`input needs a "text"`)
	}
	schema := defaultSchema
	if len(req.Schema) > 0 {
		schema = string(req.Schema)
	}
	prompt := "<|im_start|>system\nYou extract facts from text into JSON with the fields of this schema: " + schema +
		"<|im_end|>\n<|im_start|>user\n" + req.Text + "<|im_end|>\n<|im_start|>assistant\n"
	g, err := realm.GenerateWith(
		realm.GenerateParams{Model: model, Prompt: prompt, MaxTokens: 128},
		realm.GenerateOptions{Constraint: realm.JSONSchema(schema)},
	)
	if err != nil {
		return err // ErrInvalidConstraint for a schema that does not compile
	}
	var data json.RawMessage
	if err := json.Unmarshal([]byte(g.Text), &data); err != nil {
		return fmt.Errorf("the output is not JSON (finish reason %s): %w", g.FinishReason, err)
	}
	return realm.EmitJSON(map[string]any{"data": data, "completion_tokens": g.CompletionTokens})
}

func main() {}
