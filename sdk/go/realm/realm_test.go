package realm

import (
	"errors"
	"testing"
)

func TestHostErrorMatchesItsCode(t *testing.T) {
	err := error(newHostError("realm_host_generate", ErrModelNotAllowed))
	if !errors.Is(err, ErrModelNotAllowed) || errors.Is(err, ErrModelNotFound) {
		t.Fatalf("errors.Is on %v", err)
	}
	var he *HostError
	if !errors.As(err, &he) || he.Code != 3 || he.Name != "model_not_allowed" {
		t.Fatalf("errors.As on %v: %+v", err, he)
	}
	if got, want := err.Error(), "realm: realm_host_generate: model_not_allowed (3)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got := ErrorCode(42).String(); got != "error_42" {
		t.Errorf("unknown code: %q", got)
	}
}

func TestOutsideWasmEveryCallIsUnsupported(t *testing.T) {
	if _, err := Generate(GenerateParams{Model: "m", Prompt: "p"}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Generate: %v", err)
	}
	if err := Emit("x"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Emit: %v", err)
	}
}

func TestRunReportsErrorsAndPanics(t *testing.T) {
	defer Run(nil)
	if got := runHandler(); got != ExitNoHandler {
		t.Errorf("no handler: %d", got)
	}
	Run(func() error { return nil })
	if got := runHandler(); got != 0 {
		t.Errorf("ok handler: %d", got)
	}
	Run(func() error { return errors.New("nope") })
	if got := runHandler(); got != ExitError {
		t.Errorf("failing handler: %d", got)
	}
	Run(func() error { panic("boom") })
	if got := runHandler(); got != ExitPanic {
		t.Errorf("panicking handler: %d", got)
	}
}
