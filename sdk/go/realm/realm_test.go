package realm

import (
	"encoding/json"
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
	he.Message = "Tenant 'acme' may not use the model 'm'."
	if got, want := err.Error(), "realm: realm_host_generate: model_not_allowed (3): Tenant 'acme' may not use the model 'm'."; got != want {
		t.Errorf("Error() with the host's message = %q, want %q", got, want)
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

func TestChangePayload(t *testing.T) {
	state := `{"turns":1}`
	cases := []struct {
		change Change
		want   string
	}{
		{Change{}, `{"append":[],"id":"c"}`},
		{Change{ExpectedVersion: 3, Append: []Message{{Role: "user", Content: "hi"}}},
			`{"append":[{"role":"user","content":"hi"}],"expected_version":3,"id":"c"}`},
		{Change{SetState: true, State: &state}, `{"append":[],"id":"c","state":"{\"turns\":1}"}`},
		{Change{SetState: true}, `{"append":[],"id":"c","state":null}`},
		{Change{Metadata: map[string]string{"a": "b"}}, `{"append":[],"id":"c","metadata":{"a":"b"}}`},
	}
	for _, c := range cases {
		got, err := json.Marshal(c.change.payload("c"))
		if err != nil || string(got) != c.want {
			t.Errorf("%+v: got %s (%v), want %s", c.change, got, err, c.want)
		}
	}
	if _, err := GetConversation("conv_x"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("GetConversation outside wasm: %v", err)
	}
	if got := ErrConflict.String(); got != "conflict" {
		t.Errorf("ErrConflict: %q", got)
	}
}

func TestSplitModelVersion(t *testing.T) {
	version, digest := SplitModelVersion("v2@sha256:0a1b")
	if version != "v2" || digest != "sha256:0a1b" {
		t.Errorf("SplitModelVersion = %q, %q", version, digest)
	}
	if version, digest := SplitModelVersion("v1"); version != "v1" || digest != "" {
		t.Errorf("without a digest: %q, %q", version, digest)
	}
}
