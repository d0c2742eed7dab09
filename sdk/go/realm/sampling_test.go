package realm

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestSamplingErrorCodesMatchTheABI(t *testing.T) {
	// runtime/sandbox/abi.py: INVALID_CONSTRAINT = 15 .. SAMPLER_INVALID = 18.
	want := map[ErrorCode]string{
		15: "invalid_constraint", 16: "sampler_timeout", 17: "sampler_trap", 18: "sampler_invalid",
	}
	got := map[ErrorCode]string{
		ErrInvalidConstraint: ErrInvalidConstraint.String(), ErrSamplerTimeout: ErrSamplerTimeout.String(),
		ErrSamplerTrap: ErrSamplerTrap.String(), ErrSamplerInvalid: ErrSamplerInvalid.String(),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	err := error(newHostError("realm_generate_with", 16))
	if !errors.Is(err, ErrSamplerTimeout) {
		t.Errorf("errors.Is(%v, ErrSamplerTimeout) is false", err)
	}
}

func TestConstraintsEncodeAsTheCoreProtocolSays(t *testing.T) {
	cases := map[string]*Constraint{
		`{"type":"json_schema","value":"{\"type\":\"object\"}"}`: JSONSchema(`{"type":"object"}`),
		`{"type":"json_object","value":""}`:                      JSONObject(),
		`{"type":"regex","value":"[0-9]+"}`:                      Regex("[0-9]+"),
		`{"type":"lark","value":"start: \"a\""}`:                 Lark(`start: "a"`),
		`{"type":"gbnf","value":"root ::= \"a\""}`:               GBNF(`root ::= "a"`),
	}
	for want, c := range cases {
		b, _ := json.Marshal(c)
		if string(b) != want {
			t.Errorf("%s, want %s", b, want)
		}
	}
}

func TestGenerateWithRequestCarriesEveryOption(t *testing.T) {
	req := generateWithRequest{Params: GenerateParams{Model: "m", Prompt: "p"}}
	b, _ := json.Marshal(req)
	want := `{"params":{"model":"m","prompt":"p","temperature":0},"options":{"constraint":null,"logprobs":null,"sampler":null,"stream":false}}`
	if string(b) != want {
		t.Errorf("no options: %s", b)
	}
	if _, err := GenerateWith(GenerateParams{Model: "m", Prompt: "p"}, GenerateOptions{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("outside wasm: %v", err)
	}
}

func TestGenerationDetailDecodesTheHostsResult(t *testing.T) {
	res := `{"text":"{}","finish_reason":"stop","prompt_tokens":5,"completion_tokens":2,
		"tokens":[{"token":90,"logprob":-0.5,"top":[{"token":90,"logprob":-0.5,"text":"{"}]},{"token":92,"logprob":-0.1,"top":[]}]}`
	var d GenerationDetail
	if err := json.Unmarshal([]byte(res), &d); err != nil {
		t.Fatal(err)
	}
	if d.Text != "{}" || d.CompletionTokens != 2 || len(d.Tokens) != 2 || d.Tokens[0].Top[0].Text != "{" {
		t.Errorf("%+v", d)
	}
}

const stepInput = `{"steps":[
 {"id":7,"config":"no-e","step":2,"candidates":[{"token":5,"logprob":-0.25,"text":" the"},{"token":9,"logprob":-1.5e-3,"text":"\u00e9\n\"q\"\ud83d\ude00"}],"tokens":[1,2]},
 {"config":"x","id":18446744073709551615,"step":0,"extra":{"a":[1,"b",null]},"candidates":[{"token":3,"logprob":-Infinity,"text":"\ud800"}],"tokens":[]}
]}`

func TestStepInputParses(t *testing.T) {
	var b stepBuffers
	ss, err := b.parse([]byte(stepInput))
	if err != nil {
		t.Fatal(err)
	}
	want := []SequenceStep{
		{ID: 7, Config: "no-e", Step: 2, Tokens: []uint32{1, 2}, Candidates: []Candidate{
			{Token: 5, Logprob: -0.25, Text: " the"}, {Token: 9, Logprob: -1.5e-3, Text: "é\n\"q\"😀"}}},
		{ID: math.MaxUint64, Config: "x", Step: 0, Tokens: []uint32{}, Candidates: []Candidate{
			{Token: 3, Logprob: math.Inf(-1), Text: "\uFFFD"}}},
	}
	if !reflect.DeepEqual(ss, want) {
		t.Errorf("got  %+v\nwant %+v", ss, want)
	}
}

func TestStepInputAgreesWithEncodingJSON(t *testing.T) {
	// The hand-written reader against encoding/json on what Python's json.dumps writes.
	texts := []string{"a", " é", "\t\\/", "日本", "\x00\x1f", "😀x"}
	type cand struct {
		Token   uint32  `json:"token"`
		Logprob float64 `json:"logprob"`
		Text    string  `json:"text"`
	}
	type step struct {
		ID         uint64   `json:"id"`
		Config     string   `json:"config"`
		Step       int      `json:"step"`
		Candidates []cand   `json:"candidates"`
		Tokens     []uint32 `json:"tokens"`
	}
	var in struct {
		Steps []step `json:"steps"`
	}
	for i := 0; i < 5; i++ {
		st := step{ID: uint64(i * 1000), Config: fmt.Sprintf(`{"rule":%d}`, i), Step: i, Tokens: make([]uint32, i)}
		for j, tx := range texts {
			st.Candidates = append(st.Candidates, cand{uint32(j), -float64(j) / 3, tx})
		}
		in.Steps = append(in.Steps, st)
	}
	raw, _ := json.Marshal(in)
	var b stepBuffers
	for round := 0; round < 2; round++ { // the second round reuses the buffers and interned strings
		ss, err := b.parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range ss {
			w := in.Steps[i]
			if s.ID != w.ID || s.Config != w.Config || s.Step != w.Step || len(s.Tokens) != len(w.Tokens) {
				t.Fatalf("step %d: %+v, want %+v", i, s, w)
			}
			for j, c := range s.Candidates {
				if c != (Candidate{w.Candidates[j].Token, w.Candidates[j].Logprob, w.Candidates[j].Text}) {
					t.Errorf("step %d candidate %d: %+v, want %+v", i, j, c, w.Candidates[j])
				}
			}
		}
	}
}

func TestMalformedStepInputIsAnError(t *testing.T) {
	for _, in := range []string{``, `{`, `{"steps":[{"id":"x"}]}`, `{"steps":[{"config":"a}]}`, `{"steps":[]} x`, `{"steps":[{"id":-1}]}`} {
		var b stepBuffers
		if _, err := b.parse([]byte(in)); !errors.Is(err, errStepJSON) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestDecisionsEncodeAsTheCoreProtocolSays(t *testing.T) {
	ds := []Decision{
		Sample(), Token(5), Allow(1, 2), Bias(map[uint32]float32{9: 1.5, 3: -2}), Ban(4),
		BiasList(TokenBias{7, float32(math.Inf(-1))}), Force(8, 9), StopSequence(),
	}
	got := string(appendDecisions(nil, ds))
	want := `{"decisions":[{"kind":"sample"},{"kind":"token","token":5},{"kind":"allow","tokens":[1,2]},` +
		`{"kind":"bias","bias":[{"token":3,"bias":-2},{"token":9,"bias":1.5}]},{"kind":"bias","bias":[{"token":4,"bias":-1e+38}]},` +
		`{"kind":"bias","bias":[{"token":7,"bias":-1e+38}]},{"kind":"force","tokens":[8,9]},{"kind":"stop"}]}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	var parsed map[string]any
	if err := json.Unmarshal([]byte(got), &parsed); err != nil {
		t.Errorf("not JSON: %v", err)
	}
}

func TestSamplerStepRunsTheSamplerAndRecoversItsPanic(t *testing.T) {
	var b stepBuffers
	out, code := b.handle([]byte(stepInput), func(ss []SequenceStep) []Decision {
		ds := make([]Decision, len(ss))
		for i, s := range ss {
			ds[i] = Token(s.Candidates[0].Token)
		}
		return ds
	})
	if code != 0 || string(out) != `{"decisions":[{"kind":"token","token":5},{"kind":"token","token":3}]}` {
		t.Errorf("%d %s", code, out)
	}
	if _, code := b.handle([]byte(stepInput), func([]SequenceStep) []Decision { panic("boom") }); code != ExitPanic {
		t.Errorf("panic: %d", code)
	}
	if _, code := b.handle([]byte(`{"steps":`), func([]SequenceStep) []Decision { return nil }); code != ExitError {
		t.Errorf("bad input: %d", code)
	}
}

func TestSetSamplerDeclaresABI12NotABI13(t *testing.T) {
	defer func() { sampler, samplerDecide, declaredVersion = nil, nil, ABIVersion11 }()
	if declaredVersion != 1<<16|1 {
		t.Fatalf("without a sampler a module declares 1.1, got %#x", declaredVersion)
	}
	if runSamplerStep(10) != ExitNoHandler {
		t.Errorf("a step without a sampler must fail")
	}
	SetSampler(func(ss []SequenceStep) []Decision { return nil })
	if declaredVersion != 1<<16|2 {
		t.Errorf("with a sampler: %#x", declaredVersion)
	}
}

func benchInput(seqs, k, sofar int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"steps":[`)
	for i := 0; i < seqs; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"id":%d,"config":"lipogram","step":%d,"candidates":[`, i, sofar)
		for j := 0; j < k; j++ {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"token":%d,"logprob":-%d.123456,"text":" word%d"}`, 1000+j, j, j)
		}
		sb.WriteString(`],"tokens":[`)
		for j := 0; j < sofar; j++ {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "%d", 20000+j)
		}
		sb.WriteString("]}")
	}
	sb.WriteString("]}")
	return []byte(sb.String())
}

// One step of 16 sequences, 8 candidates, 64 tokens so far each: the hand-written codec.
func BenchmarkStepCodec(b *testing.B) {
	in := benchInput(16, 8, 64)
	var sb stepBuffers
	top := func(ss []SequenceStep) []Decision {
		ds := make([]Decision, len(ss))
		for i, s := range ss {
			ds[i] = Token(s.Candidates[0].Token)
		}
		return ds
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, code := sb.handle(in, top); code != 0 {
			b.Fatal(code)
		}
	}
}

// The same step through encoding/json, for comparison.
func BenchmarkStepEncodingJSON(b *testing.B) {
	in := benchInput(16, 8, 64)
	type step struct {
		ID         uint64      `json:"id"`
		Config     string      `json:"config"`
		Step       int         `json:"step"`
		Candidates []Candidate `json:"candidates"`
		Tokens     []uint32    `json:"tokens"`
	}
	type kindToken struct {
		Kind  string `json:"kind"`
		Token uint32 `json:"token"`
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var v struct {
			Steps []step `json:"steps"`
		}
		if err := json.Unmarshal(in, &v); err != nil {
			b.Fatal(err)
		}
		out := struct {
			Decisions []kindToken `json:"decisions"`
		}{}
		for _, s := range v.Steps {
			out.Decisions = append(out.Decisions, kindToken{"token", s.Candidates[0].Token})
		}
		if _, err := json.Marshal(out); err != nil {
			b.Fatal(err)
		}
	}
}
