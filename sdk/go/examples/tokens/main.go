// Command tokens tokenizes {"text": "..."} with SmolLM2's tokenizer, decodes the tokens back
// and emits {"model": {...}, "tokens": [...], "text": "..."}.
package main

import "realm.dev/sdk/go/realm"

const model = "smollm2-135m-instruct"

func init() { realm.Run(run) }

func run() error {
	var req struct {
		Text string `json:"text"`
	}
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	info, err := realm.LoadModel(model)
	if err != nil {
		return err
	}
	tokens, err := realm.Encode(model, req.Text)
	if err != nil {
		return err
	}
	text, err := realm.Decode(model, tokens)
	if err != nil {
		return err
	}
	return realm.EmitJSON(map[string]any{"model": info, "tokens": tokens, "text": text})
}

func main() {}
