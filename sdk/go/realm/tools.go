package realm

import (
	"encoding/json"
	"fmt"
	"strings"
)

// ABI 1.3: reaching out, under the tenant's egress allowlist (docs/egress.md): plain HTTP(S)
// requests to the hosts the tenant's spec allows, and the tools of its MCP servers. The host
// resolves names itself and checks every address and redirect; what the module may reach is the
// tenant's egress, narrowed for one invocation by its X-Realm-Tools header. Failures are
// ErrDenied, ErrUnreachable, ErrTimedOut, ErrLimitExceeded, ErrToolFailed, ErrNotFound (no such
// server or tool), ErrTooLarge and ErrInvalidArgument (errors.Is).

// Header is one HTTP header; a name may repeat.
type Header struct {
	Name  string
	Value string
}

// HTTPRequest is what HTTPFetch sends. An empty Method is GET.
type HTTPRequest struct {
	Method  string
	URL     string // http(s)://host[:port]/path, on the tenant's allowedOutboundHosts
	Headers []Header
	Body    []byte
}

// HTTPResponse is the endpoint's answer, whatever its status (a 404 is a response, not an error).
type HTTPResponse struct {
	Status  int
	Headers []Header
	Body    []byte
}

// Header returns the first value of the named header (case-insensitive), or "".
func (r HTTPResponse) Header(name string) string {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// ToolInfo is one tool of an MCP server, as ListTools returns it.
type ToolInfo struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"` // a JSON Schema for CallTool's arguments
}

// ToolResult is a finished tool call. IsError is the tool's own failure (the server answered,
// and said the call failed), which the model is usually shown like any other result.
type ToolResult struct {
	Content json.RawMessage `json:"content"` // the MCP content blocks, a JSON array
	Text    string          `json:"text"`    // the text blocks joined
	IsError bool            `json:"is_error"`
}

// The core ABI's JSON: headers as [name, value] pairs, bodies in base64 (encoding/json's []byte).
type wireHTTPRequest struct {
	Method  string      `json:"method"`
	URL     string      `json:"url"`
	Headers [][2]string `json:"headers"`
	Body    []byte      `json:"body"`
}

type wireHTTPResponse struct {
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers"`
	Body    []byte      `json:"body"`
}

type wireCallTool struct {
	Server    string          `json:"server"`
	Tool      string          `json:"tool"`
	Arguments json.RawMessage `json:"arguments"`
}

func encodeHTTPRequest(r HTTPRequest) ([]byte, error) {
	method := r.Method
	if method == "" {
		method = "GET"
	}
	w := wireHTTPRequest{Method: strings.ToUpper(method), URL: r.URL, Headers: make([][2]string, len(r.Headers)), Body: r.Body}
	for i, h := range r.Headers {
		w.Headers[i] = [2]string{h.Name, h.Value}
	}
	if w.Body == nil {
		w.Body = []byte{}
	}
	return json.Marshal(w)
}

func decodeHTTPResponse(b []byte) (HTTPResponse, error) {
	var w wireHTTPResponse
	if err := json.Unmarshal(b, &w); err != nil {
		return HTTPResponse{}, err
	}
	r := HTTPResponse{Status: w.Status, Headers: make([]Header, len(w.Headers)), Body: w.Body}
	for i, h := range w.Headers {
		r.Headers[i] = Header{Name: h[0], Value: h[1]}
	}
	return r, nil
}

// encodeCallTool marshals args (any JSON object, a json.RawMessage or a []byte of JSON text
// included); nil is {}. Anything that is not an object is refused here rather than by the host.
func encodeCallTool(server, tool string, args any) ([]byte, error) {
	var raw json.RawMessage
	switch a := args.(type) {
	case nil:
		raw = json.RawMessage("{}")
	case json.RawMessage:
		raw = a
	case []byte:
		raw = json.RawMessage(a)
	default:
		b, err := json.Marshal(a)
		if err != nil {
			return nil, err
		}
		raw = b
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("the arguments must be a JSON object, got %.40s", string(raw))
	}
	return json.Marshal(wireCallTool{Server: server, Tool: tool, Arguments: raw})
}

// HTTPFetch sends one HTTP request through the host (redirects are followed by the host, each
// hop checked). Not on the allowlist, or outside this invocation's tools: ErrDenied.
func HTTPFetch(r HTTPRequest) (HTTPResponse, error) {
	const op = "realm_http_fetch"
	b, err := encodeHTTPRequest(r)
	if err != nil {
		return HTTPResponse{}, fmt.Errorf("realm: %s: %w", op, err)
	}
	res, err := takeResult(op, hostHTTPFetch(bytesPtr(b), uint32(len(b))))
	if err != nil {
		return HTTPResponse{}, err
	}
	resp, err := decodeHTTPResponse(res)
	if err != nil {
		return HTTPResponse{}, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return resp, nil
}

// ListTools lists the tools of the tenant's MCP server named server, only those its spec lets
// the module call. An unknown server is ErrNotFound; one outside this invocation's tools, ErrDenied.
func ListTools(server string) ([]ToolInfo, error) {
	const op = "realm_mcp_list_tools"
	res, err := takeResult(op, hostMCPListTools(strPtr(server), uint32(len(server))))
	if err != nil {
		return nil, err
	}
	var tools []ToolInfo
	if err := json.Unmarshal(res, &tools); err != nil {
		return nil, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return tools, nil
}

// CallTool calls tool on the MCP server named server with args, a JSON object: a map, a struct,
// or JSON text as json.RawMessage or []byte; nil is {}. A tool the spec does not allow is ErrDenied.
func CallTool(server, tool string, args any) (ToolResult, error) {
	const op = "realm_mcp_call_tool"
	b, err := encodeCallTool(server, tool, args)
	if err != nil {
		return ToolResult{}, &HostError{Op: op, Code: ErrInvalidArgument, Name: ErrInvalidArgument.String(), Message: err.Error()}
	}
	res, err := takeResult(op, hostMCPCallTool(bytesPtr(b), uint32(len(b))))
	if err != nil {
		return ToolResult{}, err
	}
	var r ToolResult
	if err := json.Unmarshal(res, &r); err != nil {
		return ToolResult{}, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return r, nil
}
