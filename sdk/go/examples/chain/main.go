// Command chain asks SmolLM2 a question, then has Gemma 3 rewrite the answer:
// input {"question": "..."}, output {"draft": "...", "answer": "...", "models": {...}}.
package main

import (
	"errors"
	"strings"

	"realm.dev/sdk/go/realm"
)

const (
	drafter = "smollm2-135m-instruct"
	editor  = "gemma-3-270m"
)

func init() { realm.Run(run) }

type request struct {
	Question string `json:"question"`
}

type response struct {
	Draft  string            `json:"draft"`
	Answer string            `json:"answer"`
	Models map[string]string `json:"models"` // name -> version
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Question) == "" {
		return errors.New(`input needs a "question"`)
	}

	draft, err := realm.Generate(realm.GenerateParams{
		Model: drafter,
		Prompt: "<|im_start|>user\n" + req.Question + "<|im_end|>\n" +
			"<|im_start|>assistant\n",
		MaxTokens: 32,
		Stop:      []string{"<|im_end|>"},
	})
	if err != nil {
		return err
	}
	realm.Logf(realm.LevelInfo, "draft: %d tokens, %s", draft.CompletionTokens, draft.FinishReason)

	final, err := realm.Generate(realm.GenerateParams{
		Model: editor,
		Prompt: "<start_of_turn>user\nRewrite this answer to \"" + req.Question +
			"\" in one clear sentence:\n" + strings.TrimSpace(draft.Text) +
			"<end_of_turn>\n<start_of_turn>model\n",
		MaxTokens: 32,
		Stop:      []string{"<end_of_turn>"},
	})
	if err != nil {
		return err
	}

	models := map[string]string{}
	for _, name := range []string{drafter, editor} {
		v, err := realm.ModelVersion(name)
		if err != nil {
			return err
		}
		models[name] = v
	}
	return realm.EmitJSON(response{
		Draft:  strings.TrimSpace(draft.Text),
		Answer: strings.TrimSpace(final.Text),
		Models: models,
	})
}

func main() {}
