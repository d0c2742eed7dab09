package realm

// ABI 1.5: the tenant's declared Pipelines (docs/pipelines.md), run from a module. A pipeline that
// does not run as this tenant is ErrNotFound, exactly like one that does not exist; a step's or the
// pipeline's timeoutSeconds, or the invocation's deadline, is ErrTimedOut; a step's own refusal
// keeps its code (ErrModelNotAllowed, ErrQuotaExceeded, ...) and its message names the step.

// StepResult is one step of a finished pipeline run.
type StepResult struct {
	Name             string  `json:"name"`
	Phase            string  `json:"phase"` // Succeeded, Failed, Skipped or Cancelled
	Attempts         int     `json:"attempts"`
	Output           *string `json:"output"`
	Error            *string `json:"error"`
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
}

// PipelineRun is a finished run: the output step's text and every step's result.
type PipelineRun struct {
	ID               string       `json:"id"`
	Output           string       `json:"output"`
	Steps            []StepResult `json:"steps"`
	PromptTokens     int          `json:"prompt_tokens"`
	CompletionTokens int          `json:"completion_tokens"`
}

type wirePipelineRun struct {
	Name  string `json:"name"`
	Input any    `json:"input"`
}

// RunPipeline runs the tenant's pipeline name to its end with input (a JSON object: what
// `{{input}}` reads is its "text" when that is a string, else the whole object as JSON).
func RunPipeline(name string, input map[string]any) (PipelineRun, error) {
	if input == nil {
		input = map[string]any{}
	}
	var out PipelineRun
	err := callJSONResult("realm_pipeline_run", wirePipelineRun{Name: name, Input: input}, func(b []byte) int64 { return hostPipelineRun(bytesPtr(b), uint32(len(b))) }, &out)
	return out, err
}
