// Command top_sampler's sampler always takes the step's first (likeliest) candidate: its text is
// exactly greedy decoding's. With {"builtin": true} the same generation uses the built-in
// sampler instead (greedy), for comparison and benchmarks.
//
// Input {"prompt": "...", "max_tokens"?: n, "builtin"?: bool}; output {"text", "completion_tokens",
// "finish_reason"}.
package main

import (
	"errors"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() {
	realm.Run(run)
	realm.SetSampler(top)
}

func top(steps []realm.SequenceStep) []realm.Decision {
	ds := make([]realm.Decision, len(steps))
	for i, s := range steps {
		ds[i] = realm.Token(s.Candidates[0].Token)
	}
	return ds
}

type request struct {
	Prompt    string `json:"prompt"`
	MaxTokens int    `json:"max_tokens"`
	Builtin   bool   `json:"builtin"`
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if req.Prompt == "" {
		return errors.New(`input needs a "prompt"`)
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 32
	}
	var opts realm.GenerateOptions
	if !req.Builtin {
		opts.Sampler = &realm.SamplerSpec{TopK: 1}
	}
	g, err := realm.GenerateWith(realm.GenerateParams{Model: model, Prompt: req.Prompt, MaxTokens: req.MaxTokens}, opts)
	if err != nil {
		return err
	}
	return realm.EmitJSON(map[string]any{
		"text": g.Text, "completion_tokens": g.CompletionTokens, "finish_reason": g.FinishReason,
	})
}

func main() {}
