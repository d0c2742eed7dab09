// Command json_rule combines the host's constraint with a rule of its own: the output is JSON
// valid against a schema (the host's constraint: the sampler only ever sees candidates the
// schema allows), and the sampler keeps every digit 7 out of it, taking the likeliest candidate
// without one.
//
// Input {"prompt"?: "...", "max_tokens"?: n}; output {"data": {...}, "text", "completion_tokens"}.
package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

const schema = `{"type":"object","properties":{"numbers":{"type":"array","items":{"type":"integer"},` +
	`"minItems":3,"maxItems":12}},"required":["numbers"],"additionalProperties":false}`

func init() {
	realm.Run(run)
	realm.SetSampler(noSeven)
}

// noSeven takes the best candidate without the config's digit; when all of the step's
// candidates have it, it bans them and lets the constraint and the built-in sampler choose.
func noSeven(steps []realm.SequenceStep) []realm.Decision {
	ds := make([]realm.Decision, len(steps))
	for i, s := range steps {
		var banned []uint32
		ds[i] = realm.Sample()
		for _, c := range s.Candidates {
			if !strings.Contains(c.Text, s.Config) {
				ds[i] = realm.Token(c.Token)
				banned = nil
				break
			}
			banned = append(banned, c.Token)
		}
		if banned != nil {
			ds[i] = realm.Ban(banned...)
		}
	}
	return ds
}

type request struct {
	Prompt    string `json:"prompt"`
	MaxTokens int    `json:"max_tokens"`
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if req.Prompt == "" {
		req.Prompt = "List the first ten prime numbers as JSON."
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 96
	}
	prompt := "<|im_start|>user\n" + req.Prompt + "<|im_end|>\n<|im_start|>assistant\n"
	g, err := realm.GenerateWith(
		realm.GenerateParams{Model: model, Prompt: prompt, MaxTokens: req.MaxTokens},
		realm.GenerateOptions{Constraint: realm.JSONSchema(schema), Sampler: &realm.SamplerSpec{Config: "7", TopK: 32}},
	)
	if err != nil {
		return err
	}
	var data json.RawMessage
	if err := json.Unmarshal([]byte(g.Text), &data); err != nil {
		return fmt.Errorf("the output is not JSON (finish reason %s): %w", g.FinishReason, err)
	}
	return realm.EmitJSON(map[string]any{"data": data, "text": g.Text, "completion_tokens": g.CompletionTokens})
}

func main() {}
