// Command rag answers a question from the tenant's own documents: it searches one of the tenant's
// vector collections (ABI 1.4), puts the best chunks in SmolLM2's prompt, and cites the chunks used.
//
// Input {"collection": "vs_...", "question": "...", "k"?: 3}; output {"answer": "...",
// "citations": [{"id": "<item>#<n>", "score": 0.61}, ...]}.
package main

import (
	"errors"
	"fmt"
	"strings"

	"realm.dev/sdk/go/realm"
)

const model = "smollm2-135m-instruct"

func init() { realm.Run(run) }

type request struct {
	Collection string `json:"collection"`
	Question   string `json:"question"`
	K          int    `json:"k"`
}

type citation struct {
	ID    string  `json:"id"`
	Score float64 `json:"score"`
}

type response struct {
	Answer    string     `json:"answer"`
	Citations []citation `json:"citations"`
}

func prompt(question string, hits []realm.Hit) string {
	var b strings.Builder
	b.WriteString("<|im_start|>system\nAnswer the question in one sentence, using only the context.<|im_end|>\n")
	b.WriteString("<|im_start|>user\nContext:\n")
	for i, h := range hits {
		fmt.Fprintf(&b, "[%d] %s\n", i+1, h.Text)
	}
	b.WriteString("\nQuestion: " + question + "<|im_end|>\n<|im_start|>assistant\n")
	return b.String()
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Question) == "" || req.Collection == "" {
		return errors.New(`input needs a "collection" and a "question"`)
	}
	if req.K == 0 {
		req.K = 3
	}
	hits, err := realm.Search(req.Collection, req.Question, req.K, nil)
	if err != nil {
		return err
	}
	g, err := realm.Generate(realm.GenerateParams{
		Model:     model,
		Prompt:    prompt(req.Question, hits),
		MaxTokens: 48,
		Stop:      []string{"<|im_end|>"},
	})
	if err != nil {
		return err
	}
	out := response{Answer: strings.TrimSpace(g.Text), Citations: []citation{}}
	for _, h := range hits {
		out.Citations = append(out.Citations, citation{ID: h.ID, Score: h.Score})
	}
	return realm.EmitJSON(out)
}

func main() {}
