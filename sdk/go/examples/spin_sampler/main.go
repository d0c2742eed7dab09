// Command spin_sampler is a hostile sampler: its step loops forever. The host must interrupt it
// at the tenant's per-step budget (samplerStepMs, samplerFuelPerStep) and end the generation with
// ErrSamplerTimeout, without holding up other tenants' sequences.
//
// Input {"prompt"?: "...", "max_tokens"?: n}; output {"error": "sampler_timeout", "code": 16,
// "message": "..."} when the host ended it so; any other outcome fails the invocation.
package main

import (
	"errors"
	"fmt"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() {
	realm.Run(run)
	realm.SetSampler(spin)
}

var sink uint64

func spin(steps []realm.SequenceStep) []realm.Decision {
	for i := uint64(0); ; i++ {
		sink += i
	}
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
		req.Prompt = "Once upon a time"
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 16
	}
	g, err := realm.GenerateWith(
		realm.GenerateParams{Model: model, Prompt: req.Prompt, MaxTokens: req.MaxTokens},
		realm.GenerateOptions{Sampler: &realm.SamplerSpec{TopK: 4}},
	)
	var he *realm.HostError
	if errors.Is(err, realm.ErrSamplerTimeout) && errors.As(err, &he) {
		return realm.EmitJSON(map[string]any{"error": he.Name, "code": int32(he.Code), "message": he.Message})
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("the spinning sampler was not interrupted: %q", g.Text)
}

func main() {}
