package realm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"unsafe"
)

// ABI version this SDK speaks: (major << 16) | minor. 1.1 added conversations, 1.2
// GenerateWith and samplers, 1.3 tools (HTTPFetch, ListTools, CallTool), 1.4 retrieval (Embed,
// Search, ...), 1.5 pipelines (RunPipeline).
const (
	ABIMajor   = 1
	ABIMinor   = 5
	ABIVersion = ABIMajor<<16 | ABIMinor
)

// ABIVersion12 is what a module with a sampler declares: the sampler needs 1.2, and a module
// that calls no tool function still deploys on a 1.2 host (the tools imports are linked only
// into modules that call them, and a host checks imports by name at deploy).
const ABIVersion12 = ABIMajor<<16 | 2

// ABIVersion11 is what realm_abi_version declares for a module that sets no sampler, so that
// such a module still deploys on a 1.1 host (a host checks the functions a module imports, and
// a module that calls GenerateWith imports realm_generate_with, which a 1.1 host refuses by
// name at deploy). SetSampler raises the declaration to ABIVersion.
const ABIVersion11 = ABIMajor<<16 | 1

// declaredVersion is what realm_abi_version returns; SetSampler, called from init before the
// host asks, sets it to ABIVersion.
var declaredVersion int32 = ABIVersion11

// GenerateParams is one generation request. Zero values mean the host's defaults
// (max_tokens 64, top_p 1, top_k off, no stop strings, no seed); Temperature 0 is greedy.
type GenerateParams struct {
	Model       string   `json:"model"`
	Prompt      string   `json:"prompt"`
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature float64  `json:"temperature"`
	TopP        float64  `json:"top_p,omitempty"`
	TopK        int      `json:"top_k,omitempty"`
	Stop        []string `json:"stop,omitempty"` // at most 4
	Seed        *uint64  `json:"seed,omitempty"`
}

// Generation is a finished completion.
type Generation struct {
	Text             string `json:"text"`
	FinishReason     string `json:"finish_reason"` // "stop" or "length"
	PromptTokens     int    `json:"prompt_tokens"`
	CompletionTokens int    `json:"completion_tokens"`
}

// ModelInfo describes a model the tenant may use.
type ModelInfo struct {
	Name            string `json:"name"`
	Version         string `json:"version"`
	Engine          string `json:"engine"`
	ContextLength   int    `json:"context_length"`
	VocabSize       int    `json:"vocab_size"`
	HasChatTemplate bool   `json:"has_chat_template"`
}

// LogLevel is the severity of a Log message.
type LogLevel int32

const (
	LevelDebug LogLevel = 0
	LevelInfo  LogLevel = 1
	LevelWarn  LogLevel = 2
	LevelError LogLevel = 3
)

// Generate runs a completion to the end; the sequence joins the runtime's shared batch.
func Generate(p GenerateParams) (Generation, error) {
	return generate("realm_host_generate", hostGenerate, p)
}

// GenerateStream is Generate, and the text also goes to the invocation's output as it is
// produced (the caller sees it at once when it streams).
func GenerateStream(p GenerateParams) (Generation, error) {
	return generate("realm_host_generate_stream", hostGenerateStream, p)
}

func generate(op string, call func(unsafe.Pointer, uint32) int64, p GenerateParams) (Generation, error) {
	var g Generation
	req, err := json.Marshal(p)
	if err != nil {
		return g, fmt.Errorf("realm: %s: %w", op, err)
	}
	res, err := takeResult(op, call(bytesPtr(req), uint32(len(req))))
	if err != nil {
		return g, err
	}
	if err := json.Unmarshal(res, &g); err != nil {
		return g, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return g, nil
}

// Encode tokenizes text with the model's tokenizer.
func Encode(model, text string) ([]uint32, error) {
	const op = "realm_encode_tokens"
	res, err := takeResult(op, hostEncodeTokens(strPtr(model), uint32(len(model)), strPtr(text), uint32(len(text))))
	if err != nil {
		return nil, err
	}
	if len(res)%4 != 0 {
		return nil, fmt.Errorf("realm: %s: result of %d bytes is not a u32 array", op, len(res))
	}
	tokens := make([]uint32, len(res)/4)
	for i := range tokens {
		tokens[i] = binary.LittleEndian.Uint32(res[4*i:])
	}
	return tokens, nil
}

// Decode turns tokens back into text.
func Decode(model string, tokens []uint32) (string, error) {
	// WebAssembly is little-endian, so a []uint32 already is the LE u32 array the host reads.
	n := hostDecodeTokens(strPtr(model), uint32(len(model)), unsafe.Pointer(unsafe.SliceData(tokens)), uint32(len(tokens)))
	res, err := takeResult("realm_decode_tokens", n)
	return string(res), err
}

// LoadModel describes a model; models the tenant may not use fail with ErrModelNotAllowed.
func LoadModel(name string) (ModelInfo, error) {
	const op = "realm_host_load_model_by_name"
	var info ModelInfo
	res, err := takeResult(op, hostLoadModelByName(strPtr(name), uint32(len(name))))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(res, &info); err != nil {
		return info, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return info, nil
}

// ModelVersion returns the version a model reference reaches, with the digest of its weights:
// "v2@sha256:<hex>". name is a model reference: "smollm2-135m-instruct@v2" names the version; a bare
// name reports the version its weights pick for this invocation (the same one its Generate calls
// naming the bare model reach). SplitModelVersion separates the two parts.
func ModelVersion(name string) (string, error) {
	res, err := takeResult("realm_get_model_version", hostGetModelVersion(strPtr(name), uint32(len(name))))
	return string(res), err
}

// SplitModelVersion splits what ModelVersion returns into the version's name ("v2") and the digest of
// its weights ("sha256:<hex>"); a string without "@" is all version.
func SplitModelVersion(v string) (version, digest string) {
	version, digest, _ = strings.Cut(v, "@")
	return version, digest
}

// Input returns the invocation's input: the request's JSON body, as text.
func Input() ([]byte, error) {
	return takeResult("realm_input", hostInput())
}

// DecodeInput unmarshals the invocation's JSON input into v.
func DecodeInput(v any) error {
	in, err := Input()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(in, v); err != nil {
		return fmt.Errorf("realm: input: %w", err)
	}
	return nil
}

// Emit appends a chunk to the invocation's output.
func Emit(chunk string) error {
	if rc := hostEmit(strPtr(chunk), uint32(len(chunk))); rc != 0 {
		return newHostError("realm_emit", ErrorCode(-rc))
	}
	return nil
}

// EmitJSON appends v, marshalled as JSON, to the invocation's output.
func EmitJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("realm: emit: %w", err)
	}
	if rc := hostEmit(bytesPtr(b), uint32(len(b))); rc != 0 {
		return newHostError("realm_emit", ErrorCode(-rc))
	}
	return nil
}

// Log writes a message to the runtime's log for this tenant. Logging never fails the
// tenant: a message the host refuses is dropped.
func Log(level LogLevel, msg string) {
	hostLog(int32(level), strPtr(msg), uint32(len(msg)))
}

// Logf is Log with fmt.Sprintf formatting.
func Logf(level LogLevel, format string, args ...any) {
	Log(level, fmt.Sprintf(format, args...))
}

// takeResult turns an i64 host result into the pending result's bytes, or a *HostError.
func takeResult(op string, n int64) ([]byte, error) {
	if n < 0 {
		err := newHostError(op, ErrorCode(-n))
		err.Message = pendingMessage()
		return nil, err
	}
	buf := make([]byte, n)
	got := hostResultRead(bytesPtr(buf), uint32(n))
	if got < 0 {
		return nil, newHostError(op, ErrorCode(-got))
	}
	if int64(got) != n {
		return nil, fmt.Errorf("realm: %s: host copied %d of %d result bytes", op, got, n)
	}
	return buf, nil
}

// maxErrorMessage bounds the host's error message a failed call leaves pending; a longer one is left unread.
const maxErrorMessage = 4096

// pendingMessage reads the message a failed result-producing call leaves pending (docs/abi.md), or "".
func pendingMessage() string {
	buf := make([]byte, maxErrorMessage)
	got := hostResultRead(bytesPtr(buf), uint32(len(buf)))
	if got <= 0 {
		return ""
	}
	return string(buf[:got])
}

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// strPtr is the address of s's bytes; the host only reads them.
func strPtr(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }
