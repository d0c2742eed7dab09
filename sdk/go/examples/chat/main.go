// Command chat answers {"question": "..."} with {"answer": "..."} from SmolLM2.
package main

import (
	"errors"
	"strings"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() { realm.Run(run) }

type request struct {
	Question string `json:"question"`
}

type response struct {
	Answer string `json:"answer"`
}

// prompt is SmolLM2's chat template (ChatML) with one user turn.
func prompt(question string) string {
	return "<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n" +
		"<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n"
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Question) == "" {
		return errors.New(`input needs a "question"`)
	}
	g, err := realm.Generate(realm.GenerateParams{
		Model:       model,
		Prompt:      prompt(req.Question),
		MaxTokens:   32,
		Temperature: 0,
		Stop:        []string{"<|im_end|>"},
	})
	if err != nil {
		return err
	}
	return realm.EmitJSON(response{Answer: strings.TrimSpace(g.Text)})
}

func main() {}
