package realm

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestToolErrorCodesMatchABI(t *testing.T) {
	want := map[ErrorCode]string{19: "denied", 20: "unreachable", 21: "timed_out", 22: "limit_exceeded", 23: "tool_failed"}
	for code, name := range want {
		if code.String() != name {
			t.Errorf("code %d is %q, want %q", code, code.String(), name)
		}
	}
	err := error(newHostError("realm_http_fetch", ErrDenied))
	if !errors.Is(err, ErrDenied) {
		t.Errorf("errors.Is(%v, ErrDenied) is false", err)
	}
	if errors.Is(err, ErrUnreachable) {
		t.Errorf("errors.Is(%v, ErrUnreachable) is true", err)
	}
}

func TestHTTPRequestWireFormat(t *testing.T) {
	b, err := encodeHTTPRequest(HTTPRequest{URL: "http://127.0.0.1:8080/x", Headers: []Header{{"Accept", "a"}, {"Accept", "b"}}, Body: []byte("hi\x00")})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"method":"GET","url":"http://127.0.0.1:8080/x","headers":[["Accept","a"],["Accept","b"]],"body":"aGkA"}`
	if string(b) != want {
		t.Errorf("got %s\nwant %s", b, want)
	}
	b, _ = encodeHTTPRequest(HTTPRequest{Method: "post", URL: "http://h/"})
	if got := `{"method":"POST","url":"http://h/","headers":[],"body":""}`; string(b) != got {
		t.Errorf("an empty request is %s", b)
	}
}

func TestHTTPResponseWireFormat(t *testing.T) {
	r, err := decodeHTTPResponse([]byte(`{"status":404,"headers":[["Content-Type","text/plain"],["X-A","1"]],"body":"bm8="}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 404 || string(r.Body) != "no" || len(r.Headers) != 2 {
		t.Fatalf("decoded %+v", r)
	}
	if r.Header("content-type") != "text/plain" {
		t.Errorf("Header is case-insensitive: %q", r.Header("content-type"))
	}
}

func TestCallToolArguments(t *testing.T) {
	for _, args := range []any{map[string]int{"a": 1}, json.RawMessage(`{"a":1}`), []byte(`{"a":1}`), struct {
		A int `json:"a"`
	}{1}} {
		b, err := encodeCallTool("srv", "add", args)
		if err != nil {
			t.Fatalf("%T: %v", args, err)
		}
		if want := `{"server":"srv","tool":"add","arguments":{"a":1}}`; string(b) != want {
			t.Errorf("%T: %s", args, b)
		}
	}
	b, _ := encodeCallTool("srv", "now", nil)
	if want := `{"server":"srv","tool":"now","arguments":{}}`; string(b) != want {
		t.Errorf("nil arguments: %s", b)
	}
}

func TestCallToolRefusesArgumentsThatAreNotAnObject(t *testing.T) {
	for _, args := range []any{[]int{1}, "x", json.RawMessage(`null`), json.RawMessage(`{`)} {
		_, err := CallTool("srv", "add", args)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%#v: %v", args, err)
		}
	}
}

func TestToolResultDecodes(t *testing.T) {
	var r ToolResult
	if err := json.Unmarshal([]byte(`{"content":[{"type":"text","text":"3"}],"text":"3","is_error":true}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Text != "3" || !r.IsError || string(r.Content) != `[{"type":"text","text":"3"}]` {
		t.Errorf("decoded %+v", r)
	}
	var tools []ToolInfo
	if err := json.Unmarshal([]byte(`[{"name":"add","description":"Adds.","input_schema":{"type":"object"}}]`), &tools); err != nil {
		t.Fatal(err)
	}
	if len(tools) != 1 || tools[0].Name != "add" || string(tools[0].InputSchema) != `{"type":"object"}` {
		t.Errorf("decoded %+v", tools)
	}
}

func TestOutsideWasmToolsAreUnsupported(t *testing.T) {
	if _, err := HTTPFetch(HTTPRequest{URL: "http://h/"}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("HTTPFetch: %v", err)
	}
	if _, err := ListTools("srv"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("ListTools: %v", err)
	}
	if _, err := CallTool("srv", "add", map[string]int{"a": 1}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("CallTool: %v", err)
	}
}
