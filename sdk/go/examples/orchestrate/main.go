// Command orchestrate is a module as the orchestrator of declared pipelines (ABI 1.5): it runs the
// tenant's pipeline once per question, keeps the answers whose review step succeeded, and reports
// what each run cost.
//
// Input {"pipeline": "...", "questions": ["...", ...]}; output {"answers": [{"question", "answer",
// "run", "steps", "tokens"}], "failed": [{"question", "error"}]}.
package main

import (
	"errors"

	"realm.dev/sdk/go/realm"
)

func init() { realm.Run(run) }

type request struct {
	Pipeline  string   `json:"pipeline"`
	Questions []string `json:"questions"`
}

type answer struct {
	Question string   `json:"question"`
	Answer   string   `json:"answer"`
	Run      string   `json:"run"`
	Steps    []string `json:"steps"`
	Tokens   int      `json:"tokens"`
}

type failure struct {
	Question string `json:"question"`
	Error    string `json:"error"`
}

func run() error {
	var req request
	if err := realm.DecodeInput(&req); err != nil {
		return err
	}
	if req.Pipeline == "" || len(req.Questions) == 0 {
		return errors.New(`input needs "pipeline" and "questions"`)
	}
	answers, failed := []answer{}, []failure{}
	for _, q := range req.Questions {
		r, err := realm.RunPipeline(req.Pipeline, map[string]any{"text": q})
		if err != nil {
			var he *realm.HostError
			if errors.As(err, &he) && he.Code == realm.ErrNotFound {
				return err // no such pipeline for this tenant: nothing else will run either
			}
			failed = append(failed, failure{Question: q, Error: err.Error()})
			continue
		}
		steps := make([]string, 0, len(r.Steps))
		for _, s := range r.Steps {
			steps = append(steps, s.Name+":"+s.Phase)
		}
		answers = append(answers, answer{q, r.Output, r.ID, steps, r.PromptTokens + r.CompletionTokens})
	}
	return realm.EmitJSON(map[string]any{"answers": answers, "failed": failed})
}

func main() {}
