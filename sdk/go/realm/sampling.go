package realm

import (
	"encoding/json"
	"fmt"
	"sort"
	"unsafe"
)

// ABI 1.2: generation with a constraint, logprobs or the module's own sampler (docs/abi.md,
// "Sampling"; docs/sampling.md for what the host does with each).

// Constraint is output the host keeps to, token by token. Build one with JSONSchema,
// JSONObject, Regex, Lark or GBNF.
type Constraint struct {
	Type  string `json:"type"`  // "json_schema", "json_object", "regex", "lark" or "gbnf"
	Value string `json:"value"` // the schema, expression or grammar; "" for json_object
}

// JSONSchema: the output is JSON valid against schema (a JSON Schema, as JSON text).
func JSONSchema(schema string) *Constraint { return &Constraint{Type: "json_schema", Value: schema} }

// JSONObject: the output is any JSON object.
func JSONObject() *Constraint { return &Constraint{Type: "json_object"} }

// Regex: the whole output matches the regular expression.
func Regex(pattern string) *Constraint { return &Constraint{Type: "regex", Value: pattern} }

// Lark: the output is in the language of a context-free grammar in Lark syntax (llguidance's dialect).
func Lark(grammar string) *Constraint { return &Constraint{Type: "lark", Value: grammar} }

// GBNF: the output is in the language of a grammar in GBNF (llama.cpp's dialect).
func GBNF(grammar string) *Constraint { return &Constraint{Type: "gbnf", Value: grammar} }

// DefaultSamplerTopK is the candidates per step a SamplerSpec with TopK 0 asks for.
const DefaultSamplerTopK = 8

// SamplerSpec hands every step of a generation to the module's sampler (SetSampler).
type SamplerSpec struct {
	Config string `json:"config"` // given back in every SequenceStep of this generation
	TopK   int    `json:"top_k"`  // candidates per step, 1..64; 0 means DefaultSamplerTopK
}

// GenerateOptions are what GenerateWith adds to GenerateParams; the zero value is a plain Generate.
type GenerateOptions struct {
	Constraint  *Constraint  // nil: unconstrained
	Logprobs    bool         // return every generated token with its logprob
	TopLogprobs int          // and this many alternatives (0..20), with Logprobs
	Sampler     *SamplerSpec // nil: the built-in sampler
	Stream      bool         // the text also goes to the invocation's output as it is produced
}

// Candidate is one of a step's likeliest tokens.
type Candidate struct {
	Token   uint32  `json:"token"`
	Logprob float64 `json:"logprob"` // natural log, after the generation's constraint
	Text    string  `json:"text"`    // its piece (lossy where a token is part of a UTF-8 character)
}

// GeneratedToken is one token of a GenerationDetail.
type GeneratedToken struct {
	Token   uint32      `json:"token"`
	Logprob float64     `json:"logprob"`
	Top     []Candidate `json:"top"` // best first, TopLogprobs of them
}

// GenerationDetail is a finished GenerateWith: the Generation, and its tokens when Logprobs was set.
type GenerationDetail struct {
	Generation
	Tokens []GeneratedToken `json:"tokens"`
}

type generateWithRequest struct {
	Params  GenerateParams      `json:"params"`
	Options generateWithOptions `json:"options"`
}

type generateWithOptions struct {
	Constraint *Constraint  `json:"constraint"`
	Logprobs   *int         `json:"logprobs"`
	Sampler    *SamplerSpec `json:"sampler"`
	Stream     bool         `json:"stream"`
}

// GenerateWith is Generate with options: a constraint, logprobs, the module's own sampler.
// Failures specific to them are ErrInvalidConstraint, ErrSamplerTimeout, ErrSamplerTrap and
// ErrSamplerInvalid (errors.Is); the generation then has ended.
func GenerateWith(p GenerateParams, o GenerateOptions) (GenerationDetail, error) {
	const op = "realm_generate_with"
	var d GenerationDetail
	req := generateWithRequest{Params: p, Options: generateWithOptions{Constraint: o.Constraint, Stream: o.Stream}}
	if o.Logprobs {
		n := o.TopLogprobs
		req.Options.Logprobs = &n
	}
	if o.Sampler != nil {
		s := *o.Sampler
		if s.TopK == 0 {
			s.TopK = DefaultSamplerTopK
		}
		req.Options.Sampler = &s
	}
	b, err := json.Marshal(req)
	if err != nil {
		return d, fmt.Errorf("realm: %s: %w", op, err)
	}
	res, err := takeResult(op, hostGenerateWith(bytesPtr(b), uint32(len(b))))
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal(res, &d); err != nil {
		return d, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return d, nil
}

// ---- the sampler -----------------------------------------------------------------------

// SequenceStep is one live sequence at one step, as the host hands it to the sampler.
//
// A step and its slices are the SDK's, reused at the next step: copy what must outlive the call.
type SequenceStep struct {
	ID         uint64      // the generation, stable for its life, unique within the tenant
	Config     string      // its SamplerSpec.Config
	Step       int         // index of the completion token being chosen (0 = the first)
	Candidates []Candidate // best first, after the generation's constraint; at most its TopK
	Tokens     []uint32    // completion tokens so far
}

// DecisionKind says what a Decision does.
type DecisionKind uint8

const (
	KindSample DecisionKind = iota // sample as the generation's own parameters say
	KindToken                      // take Tokens[0]
	KindAllow                      // sample only among Tokens
	KindBias                       // add Bias to the logits, then sample
	KindForce                      // append Tokens now (fast-forward); the first is this step's token
	KindStop                       // end the sequence, finish reason "stop"
)

var kindNames = [...]string{"sample", "token", "allow", "bias", "force", "stop"}

func (k DecisionKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind_%d", k)
}

// TokenBias is added to a token's logit; BanBias (or anything at or below -1e30) bans it.
type TokenBias struct {
	Token uint32
	Bias  float32
}

// BanBias is the bias that bans a token.
const BanBias float32 = -1e38

// Decision is a sampler's answer for one sequence at one step.
type Decision struct {
	Kind   DecisionKind
	Tokens []uint32
	Bias   []TokenBias
}

// Sample lets the built-in sampler choose, with the generation's own parameters.
func Sample() Decision { return Decision{Kind: KindSample} }

// Token takes this token (it must be allowed by the generation's constraint).
func Token(id uint32) Decision { return Decision{Kind: KindToken, Tokens: []uint32{id}} }

// Allow samples only among these tokens.
func Allow(ids ...uint32) Decision { return Decision{Kind: KindAllow, Tokens: ids} }

// Bias adds these biases to the logits, then samples; sent in token order.
func Bias(b map[uint32]float32) Decision {
	list := make([]TokenBias, 0, len(b))
	for t, v := range b {
		list = append(list, TokenBias{t, v})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Token < list[j].Token })
	return Decision{Kind: KindBias, Bias: list}
}

// BiasList is Bias from a slice, in the slice's order.
func BiasList(b ...TokenBias) Decision { return Decision{Kind: KindBias, Bias: b} }

// Ban samples as usual but never these tokens.
func Ban(ids ...uint32) Decision {
	list := make([]TokenBias, len(ids))
	for i, t := range ids {
		list[i] = TokenBias{t, BanBias}
	}
	return Decision{Kind: KindBias, Bias: list}
}

// Force appends these tokens now (at least one): the first is this step's token.
func Force(ids ...uint32) Decision { return Decision{Kind: KindForce, Tokens: ids} }

// StopSequence ends the sequence here, finish reason "stop".
func StopSequence() Decision { return Decision{Kind: KindStop} }

var (
	sampler func([]SequenceStep) []Decision
	// samplerDecide is hostSamplerDecide once SetSampler is called: reached only through it,
	// the import is linked only into modules that set a sampler.
	samplerDecide func(unsafe.Pointer, uint32) int32
	steps         stepBuffers
)

// SetSampler registers the module's sampler: the host calls it once per engine step with every
// live sequence of this tenant whose generation has a SamplerSpec, and it returns one Decision
// per step, in the same order. Call it from an init function, as Run.
//
// The sampler runs in an instance of its own (not the one running the handler: share nothing
// with it but SamplerSpec.Config), under a per-step time and fuel budget; a sampler that passes
// it, panics or answers wrongly ends those sequences (ErrSamplerTimeout, ErrSamplerTrap,
// ErrSamplerInvalid from GenerateWith). Inside it only Log, Encode, Decode and LoadModel work.
func SetSampler(f func([]SequenceStep) []Decision) {
	sampler = f
	samplerDecide = hostSamplerDecide
	declaredVersion = ABIVersion12
}

// runSamplerStep is realm_sampler_step: read the steps, decide, answer; 0 or an exit code.
func runSamplerStep(inLen int32) int32 {
	if sampler == nil || samplerDecide == nil {
		Log(LevelError, "realm: no sampler: call realm.SetSampler from an init function of package main")
		return ExitNoHandler
	}
	if inLen < 0 {
		return ExitError
	}
	in := steps.input(int(inLen))
	if got := hostResultRead(bytesPtr(in), uint32(len(in))); got != inLen {
		Log(LevelError, fmt.Sprintf("realm: sampler step: read %d of %d input bytes", got, inLen))
		return ExitError
	}
	out, code := steps.handle(in, sampler)
	if code != 0 {
		return code
	}
	if rc := samplerDecide(bytesPtr(out), uint32(len(out))); rc != 0 {
		Log(LevelError, "realm: realm_sampler_decide: "+ErrorCode(-rc).String())
		return ExitError
	}
	return 0
}

// handle parses a step's input, runs f and encodes its decisions; a panic in f is logged and
// is ExitPanic, bad input ExitError.
func (b *stepBuffers) handle(in []byte, f func([]SequenceStep) []Decision) (out []byte, code int32) {
	ss, err := b.parse(in)
	if err != nil {
		Log(LevelError, "realm: sampler step: "+err.Error())
		return nil, ExitError
	}
	defer func() {
		if r := recover(); r != nil {
			Log(LevelError, fmt.Sprintf("realm: sampler panic: %v", r))
			out, code = nil, ExitPanic
		}
	}()
	b.out = appendDecisions(b.out[:0], f(ss))
	return b.out, 0
}
