package realm

import "fmt"

// ErrorCode is why a host call failed; the values match ErrorCode in
// runtime/sandbox/abi.py. An ErrorCode is itself an error, so that
// errors.Is(err, realm.ErrQuotaExceeded) matches any *HostError with that code.
type ErrorCode int32

const (
	ErrInvalidArgument ErrorCode = 1
	ErrOutOfBounds     ErrorCode = 2
	ErrModelNotAllowed ErrorCode = 3
	ErrModelNotFound   ErrorCode = 4
	ErrQuotaExceeded   ErrorCode = 5
	ErrEngineError     ErrorCode = 6
	ErrTooLarge        ErrorCode = 7
	ErrInvalidUTF8     ErrorCode = 8
	ErrUnsupported     ErrorCode = 9
	ErrNoResult        ErrorCode = 10 // realm_result_read with nothing pending
	ErrBufferTooSmall  ErrorCode = 11 // realm_result_read into a buffer shorter than the result
	ErrNotFound        ErrorCode = 12 // no such conversation for this tenant (ABI 1.1)
	ErrConflict        ErrorCode = 13 // the conversation is no longer at the expected version (ABI 1.1)
	ErrUnavailable     ErrorCode = 14 // the conversation store failed or is not configured (ABI 1.1)

	// ABI 1.2: GenerateWith.
	ErrInvalidConstraint ErrorCode = 15 // the constraint does not compile (bad schema, regex or grammar)
	ErrSamplerTimeout    ErrorCode = 16 // the module's sampler passed its per-step time or fuel budget
	ErrSamplerTrap       ErrorCode = 17 // the module's sampler trapped or panicked, or the module has none
	ErrSamplerInvalid    ErrorCode = 18 // the sampler answered wrongly (count, a token out of range or forbidden)

	// ABI 1.3: HTTPFetch, ListTools, CallTool (a tool's not-found is ErrNotFound, too-large ErrTooLarge).
	ErrDenied        ErrorCode = 19 // not on the tenant's egress allowlist, a forbidden address, or outside this invocation's tools
	ErrUnreachable   ErrorCode = 20 // the endpoint could not be reached (connection, TLS, protocol)
	ErrTimedOut      ErrorCode = 21 // the call ran past its time (the egress timeout or the invocation's deadline)
	ErrLimitExceeded ErrorCode = 22 // the invocation's tool calls or egress bytes are spent
	ErrToolFailed    ErrorCode = 23 // the MCP server failed the call (a protocol error, not a result with IsError)
)

var codeNames = [...]string{
	ErrInvalidArgument: "invalid_argument",
	ErrOutOfBounds:     "out_of_bounds",
	ErrModelNotAllowed: "model_not_allowed",
	ErrModelNotFound:   "model_not_found",
	ErrQuotaExceeded:   "quota_exceeded",
	ErrEngineError:     "engine_error",
	ErrTooLarge:        "too_large",
	ErrInvalidUTF8:     "invalid_utf8",
	ErrUnsupported:     "unsupported",
	ErrNoResult:        "no_result",
	ErrBufferTooSmall:  "buffer_too_small",
	ErrNotFound:        "not_found",
	ErrConflict:        "conflict",
	ErrUnavailable:     "unavailable",

	ErrInvalidConstraint: "invalid_constraint",
	ErrSamplerTimeout:    "sampler_timeout",
	ErrSamplerTrap:       "sampler_trap",
	ErrSamplerInvalid:    "sampler_invalid",

	ErrDenied:        "denied",
	ErrUnreachable:   "unreachable",
	ErrTimedOut:      "timed_out",
	ErrLimitExceeded: "limit_exceeded",
	ErrToolFailed:    "tool_failed",
}

// String returns the code's name in snake_case, as abi.py spells it in lower case
// ("model_not_allowed"), or "error_<n>" for a code this SDK does not know.
func (c ErrorCode) String() string {
	if c > 0 && int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("error_%d", int32(c))
}

func (c ErrorCode) Error() string { return "realm: " + c.String() }

// HostError is a host call that failed.
type HostError struct {
	Op      string    // the host function, e.g. "realm_host_generate"
	Code    ErrorCode // what the host returned, negated
	Name    string    // Code.String()
	Message string    // why, as the host put it (result-producing calls only; may be empty)
}

func newHostError(op string, code ErrorCode) *HostError {
	return &HostError{Op: op, Code: code, Name: code.String()}
}

func (e *HostError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("realm: %s: %s (%d)", e.Op, e.Name, int32(e.Code))
	}
	return fmt.Sprintf("realm: %s: %s (%d): %s", e.Op, e.Name, int32(e.Code), e.Message)
}

// Is reports whether target is the ErrorCode of e, for errors.Is.
func (e *HostError) Is(target error) bool {
	c, ok := target.(ErrorCode)
	return ok && c == e.Code
}
