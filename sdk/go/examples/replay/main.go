// Command replay runs constrained generations in order, as an agent would with its tools taken
// away: bench/bench_agents.py's baseline, the generations examples/agent recorded ("record").
//
// Input {"generations": [{"prompt", "schema", "max_tokens"}]}; output {"completion_tokens"}.
package main

import (
	"errors"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() { realm.Run(run) }

func run() error {
	var req struct {
		Generations []struct {
			Prompt    string `json:"prompt"`
			Schema    string `json:"schema"`
			MaxTokens int    `json:"max_tokens"`
		} `json:"generations"`
	}
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if len(req.Generations) == 0 {
		return errors.New(`input needs "generations"`)
	}
	tokens := 0
	for _, g := range req.Generations {
		d, err := realm.GenerateWith(
			realm.GenerateParams{Model: model, Prompt: g.Prompt, MaxTokens: g.MaxTokens},
			realm.GenerateOptions{Constraint: realm.JSONSchema(g.Schema)},
		)
		if err != nil {
			return err
		}
		tokens += d.CompletionTokens
	}
	return realm.EmitJSON(map[string]int{"completion_tokens": tokens})
}

func main() {}
