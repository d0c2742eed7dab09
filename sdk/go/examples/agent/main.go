// Command agent is a bounded loop that decides, calls an MCP tool and an HTTP API, reads the
// results and answers.
//
// Each turn the model picks its next action under a JSON-schema constraint (the small models need
// it to answer in a form the loop can act on): one of the MCP server's tools, "http_get" (the
// HTTP API), or "answer". A tool's arguments are generated under the tool's own input schema; the
// API's under {"query": string}. Each action is taken at most once, and "answer" is offered only
// once both kinds of source (the MCP server and the API) have been tried, so the trace always
// shows both; a tool the invocation may not reach (X-Realm-Tools) is tried, refused with
// ErrDenied, and the refusal is shown to the model like any other result. "min_calls" holds the
// answer back until that many tools were called (while any is left). After max_turns (default
// 4) the loop answers with what it has.
//
// Input {"question", "server" (MCP server name), "api" (URL; the query is appended as ?q=...),
// "max_turns"?, "min_calls"?, "record"?}; output {"answer", "turns", "completion_tokens",
// "trace": [{"action", "arguments", "result" or "error"+"message", "ms"}]}, and with "record"
// the generations it made ({"prompt", "schema", "max_tokens"}, in order: what examples/replay
// runs again without tools, bench/bench_agents.py's baseline). Mirrors sdk/python/examples/agent
// (which has no "record" nor "ms").
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"realm.dev/sdk/go/realm"
)

const (
	model          = "smollm2-135m-instruct"
	httpAction     = "http_get"
	answerAction   = "answer"
	maxObservation = 400 // characters of a result shown to the model
)

const querySchema = `{"type":"object","properties":{"query":{"type":"string","maxLength":40}},` +
	`"required":["query"],"additionalProperties":false}`
const answerSchema = `{"type":"object","properties":{"answer":{"type":"string","maxLength":160}},` +
	`"required":["answer"],"additionalProperties":false}`

func init() { realm.Run(run) }

type request struct {
	Question string `json:"question"`
	Server   string `json:"server"`
	API      string `json:"api"`
	MaxTurns int    `json:"max_turns"`
	MinCalls int    `json:"min_calls"`
	Record   bool   `json:"record"`
}

// generation is one constrained generation of the loop, as "record" reports it.
type generation struct {
	Prompt    string `json:"prompt"`
	Schema    string `json:"schema"`
	MaxTokens int    `json:"max_tokens"`
}

type step struct {
	Action    string          `json:"action"`
	Arguments json.RawMessage `json:"arguments"`
	Result    *string         `json:"result,omitempty"`
	Error     string          `json:"error,omitempty"` // the error code's name, e.g. "denied"
	Message   string          `json:"message,omitempty"`
	ArgsError string          `json:"arguments_error,omitempty"` // why the arguments fell back to {}
	Ms        float64         `json:"ms"`                        // the turn's wall time: deciding, the arguments, the call
}

type agent struct {
	req   request
	tools []realm.ToolInfo
	trace []step
	gens  []generation
	toks  int
}

func run() error {
	var a agent
	if err := realm.DecodeInput(&a.req); err != nil {
		return err
	}
	if a.req.Question == "" || a.req.Server == "" || a.req.API == "" {
		return errors.New(`input needs "question", "server" and "api"`)
	}
	turns := min(max(a.req.MaxTurns, 1), 8)
	if a.req.MaxTurns == 0 {
		turns = 4
	}
	tools, err := realm.ListTools(a.req.Server)
	if err != nil && !errors.Is(err, realm.ErrDenied) {
		return err
	}
	a.tools = tools // denied: this invocation may not reach the server; the API is what is left
	used := map[string]bool{}
	for range turns {
		var open []string
		triedMCP := len(a.tools) == 0
		for _, t := range a.tools {
			if used[t.Name] {
				triedMCP = true
			} else {
				open = append(open, t.Name)
			}
		}
		if !used[httpAction] {
			open = append(open, httpAction)
		}
		if (triedMCP && used[httpAction] && len(used) >= a.req.MinCalls) || len(open) == 0 {
			open = append(open, answerAction)
		}
		start := time.Now()
		enum, _ := json.Marshal(open)
		var choice struct {
			Action string `json:"action"`
		}
		schema := `{"type":"object","properties":{"action":{"enum":` + string(enum) + `}},"required":["action"],"additionalProperties":false}`
		if err := a.constrained("Which action next?", schema, 24, &choice); err != nil || choice.Action == "" {
			choice.Action = open[0]
		}
		if choice.Action == answerAction {
			break
		}
		used[choice.Action] = true
		s := a.act(choice.Action)
		s.Ms = float64(time.Since(start).Microseconds()) / 1000
		a.trace = append(a.trace, s)
	}
	var final struct {
		Answer string `json:"answer"`
	}
	_ = a.constrained("Answer the question.", answerSchema, 80, &final) // cut short: an empty answer
	out := map[string]any{"answer": final.Answer, "turns": len(a.trace) + 1, "completion_tokens": a.toks, "trace": a.trace}
	if a.req.Record {
		out["generations"] = a.gens
	}
	return realm.EmitJSON(out)
}

func (a *agent) act(action string) step {
	schema := querySchema
	for _, t := range a.tools {
		if t.Name == action && len(t.InputSchema) > 0 {
			schema = bounded(t.InputSchema)
		}
	}
	var args map[string]any
	argsErr := a.constrained("Give the arguments of "+action+" as JSON.", schema, 96, &args)
	if argsErr != nil || args == nil {
		args = map[string]any{}
	}
	raw, _ := json.Marshal(args)
	s := step{Action: action, Arguments: raw}
	if argsErr != nil {
		s.ArgsError = argsErr.Error()
	}
	var result string
	var err error
	if action == httpAction {
		query, _ := args["query"].(string)
		if query == "" {
			query = a.req.Question
		}
		sep := "?"
		if strings.Contains(a.req.API, "?") {
			sep = "&"
		}
		var resp realm.HTTPResponse
		resp, err = realm.HTTPFetch(realm.HTTPRequest{URL: a.req.API + sep + "q=" + url.QueryEscape(query)})
		result = fmt.Sprintf("HTTP %d: %s", resp.Status, resp.Body)
	} else {
		var r realm.ToolResult
		r, err = realm.CallTool(a.req.Server, action, raw)
		result = r.Text
		if r.IsError {
			result = "tool error: " + r.Text
		}
	}
	var he *realm.HostError
	switch {
	case errors.As(err, &he):
		s.Error, s.Message = he.Name, he.Message
	case err != nil:
		s.Error, s.Message = "failed", err.Error()
	default:
		s.Result = &result
	}
	return s
}

// maxArgString bounds a tool's string arguments that its schema leaves unbounded: a small model
// may otherwise run on inside a string until max_tokens cuts the JSON short.
const maxArgString = 48

// bounded is the schema with maxLength on its top-level string properties that have none, and no
// properties beyond its own (SmolLM2 otherwise adds some until max_tokens cuts the JSON short).
func bounded(schema json.RawMessage) string {
	var s map[string]any
	if json.Unmarshal(schema, &s) != nil {
		return string(schema)
	}
	props, _ := s["properties"].(map[string]any)
	if _, set := s["additionalProperties"]; !set && props != nil {
		s["additionalProperties"] = false
	}
	for _, p := range props {
		if prop, ok := p.(map[string]any); ok && prop["type"] == "string" && prop["maxLength"] == nil {
			prop["maxLength"] = maxArgString
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return string(schema)
	}
	return string(b)
}

// constrained generates JSON under schema and decodes it into v; an error where max_tokens cut it.
func (a *agent) constrained(ask, schema string, maxTokens int, v any) error {
	prompt := a.prompt(ask)
	a.gens = append(a.gens, generation{Prompt: prompt, Schema: schema, MaxTokens: maxTokens})
	g, err := realm.GenerateWith(
		realm.GenerateParams{Model: model, Prompt: prompt, MaxTokens: maxTokens},
		realm.GenerateOptions{Constraint: realm.JSONSchema(schema)},
	)
	if err != nil {
		return err
	}
	a.toks += g.CompletionTokens
	if err := json.Unmarshal([]byte(g.Text), v); err != nil {
		return fmt.Errorf("finish reason %s, %q: %w", g.FinishReason, g.Text, err)
	}
	return nil
}

func (a *agent) prompt(ask string) string {
	var b strings.Builder
	b.WriteString("<|im_start|>system\nYou are an agent. You can use these tools:\n")
	for _, t := range a.tools {
		fmt.Fprintf(&b, "- %s: %s\n", t.Name, t.Description)
	}
	b.WriteString("- " + httpAction + ": search the web API for a query<|im_end|>\n")
	for _, s := range a.trace {
		call, _ := json.Marshal(map[string]any{"action": s.Action, "arguments": s.Arguments})
		seen := "error " + s.Error + ": " + s.Message
		if s.Result != nil {
			seen = *s.Result
		}
		if len(seen) > maxObservation {
			seen = seen[:maxObservation]
		}
		fmt.Fprintf(&b, "<|im_start|>assistant\n%s<|im_end|>\n<|im_start|>user\nResult of %s: %s<|im_end|>\n", call, s.Action, seen)
	}
	fmt.Fprintf(&b, "<|im_start|>user\n%s\n%s<|im_end|>\n<|im_start|>assistant\n", a.req.Question, ask)
	return b.String()
}

func main() {}
