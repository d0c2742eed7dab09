// Command stream streams SmolLM2's answer to {"prompt": "..."} to the caller as it is
// generated, then emits a final line with the token counts.
package main

import (
	"fmt"

	"realm.dev/sdk/go/realm"
)

func init() { realm.Run(run) }

func run() error {
	var req struct {
		Prompt    string `json:"prompt"`
		MaxTokens int    `json:"max_tokens"`
	}
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 32
	}
	g, err := realm.GenerateStream(realm.GenerateParams{
		Model:     "smollm2-135m-instruct",
		Prompt:    req.Prompt,
		MaxTokens: req.MaxTokens,
	})
	if err != nil {
		return err
	}
	return realm.Emit(fmt.Sprintf("\n[%s: %d prompt + %d completion tokens]\n",
		g.FinishReason, g.PromptTokens, g.CompletionTokens))
}

func main() {}
