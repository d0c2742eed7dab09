// Command lipogram writes without the letter e: its sampler takes, at every step, the likeliest
// candidate whose text has no "e" or "E" (a lipogram), and ends the sequence when none of the
// step's candidates qualifies.
//
// Input {"prompt": "...", "max_tokens"?: n}; output {"text", "completion_tokens", "finish_reason"}.
package main

import (
	"errors"
	"strings"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() {
	realm.Run(run)
	realm.SetSampler(lipogram)
}

// lipogram runs in the module's sampler instance: config is the generation's banned letters.
func lipogram(steps []realm.SequenceStep) []realm.Decision {
	ds := make([]realm.Decision, len(steps))
	for i, s := range steps {
		ds[i] = realm.StopSequence()
		for _, c := range s.Candidates { // best first
			if !strings.ContainsAny(c.Text, s.Config) {
				ds[i] = realm.Token(c.Token)
				break
			}
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
		return errors.New(`input needs a "prompt"`)
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 48
	}
	prompt := "<|im_start|>user\n" + req.Prompt + "<|im_end|>\n<|im_start|>assistant\n"
	g, err := realm.GenerateWith(
		realm.GenerateParams{Model: model, Prompt: prompt, MaxTokens: req.MaxTokens},
		realm.GenerateOptions{Sampler: &realm.SamplerSpec{Config: "eE", TopK: 64}},
	)
	if err != nil {
		return err
	}
	return realm.EmitJSON(map[string]any{
		"text": g.Text, "completion_tokens": g.CompletionTokens, "finish_reason": g.FinishReason,
	})
}

func main() {}
