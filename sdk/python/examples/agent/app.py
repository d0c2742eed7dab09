"""Agent: a bounded loop that decides, calls an MCP tool and an HTTP API, reads the results and answers.

Each turn the model picks its next action with a JSON-schema constraint (the small models need it to
answer in a form the loop can act on): one of the MCP server's tools, "http_get" (the HTTP API), or
"answer". A tool's arguments are generated under the tool's own input schema; the API's under
{"query": string}. Each action is taken at most once, and "answer" is offered only once both kinds of
source (the MCP server and the API) have been tried, so the trace always shows both; a tool the
invocation may not reach (X-Realm-Tools) is tried, refused with "denied", and the refusal is shown to
the model like any other result. `min_calls` holds the answer back until that many tools were called
(while any is left). After `max_turns` (default 4) the loop answers with what it has.

Input {"question": str, "server": MCP server name, "api": URL of the API (the query is appended as
?q=...), "max_turns"?: int, "min_calls"?: int}; output {"answer": str, "turns": n, "trace":
[{"action", "arguments", "result" or "error"}]}. Mirrors sdk/go/examples/agent.
"""

import json
import urllib.parse
from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"
HTTP_ACTION = "http_get"
ANSWER = "answer"
QUERY_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 40}},
    "required": ["query"],
    "additionalProperties": False,
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 160}},
    "required": ["answer"],
    "additionalProperties": False,
}
MAX_OBSERVATION = 400  # characters of a result shown to the model
# A tool's string arguments its schema leaves unbounded get this maxLength: a small model may otherwise
# run on inside a string until max_tokens cuts the JSON short.
MAX_ARG_STRING = 48


def _bounded(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    tight = {
        k: {**p, "maxLength": MAX_ARG_STRING}
        if isinstance(p, dict) and p.get("type") == "string" and "maxLength" not in p
        else p
        for k, p in props.items()
    }
    # No properties beyond the schema's own: SmolLM2 otherwise adds some until max_tokens cuts the JSON.
    return {"additionalProperties": False, **schema, "properties": tight}


def _constrained(prompt: str, schema: dict[str, Any], max_tokens: int) -> Any:
    g = rt.generate_with(
        rt.GenerateParams(MODEL, prompt, max_tokens=max_tokens),
        rt.GenerateOptions(constraint=rt.json_schema(schema)),
    )
    try:
        return json.loads(g.text)
    except ValueError:
        return None  # cut by max_tokens: the caller falls back


def _prompt(question: str, tools: list[rt.ToolInfo], trace: list[dict[str, Any]], ask: str) -> str:
    lines = [f"- {t.name}: {t.description}" for t in tools]
    lines.append(f"- {HTTP_ACTION}: search the web API for a query")
    system = "You are an agent. You can use these tools:\n" + "\n".join(lines)
    history = []
    for step in trace:
        history.append(("assistant", json.dumps({"action": step["action"], "arguments": step["arguments"]})))
        seen = step["result"] if "result" in step else f"error {step['error']}: {step['message']}"
        history.append(("user", f"Result of {step['action']}: {seen[:MAX_OBSERVATION]}"))
    return rt.chatml(f"{question}\n{ask}", system=system, history=history)


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> Any:
        request = request if isinstance(request, dict) else {}
        question, server, api = request.get("question"), request.get("server"), request.get("api")
        if not (isinstance(question, str) and isinstance(server, str) and isinstance(api, str)):
            raise ValueError('input needs "question", "server" and "api" (strings)')
        max_turns = max(1, min(int(request.get("max_turns", 4)), 8))
        min_calls = int(request.get("min_calls", 0))
        try:
            tools = rt.list_tools(server)
        except rt.RealmError as e:
            if e.code != "denied":
                raise
            tools = []  # this invocation may not reach the server: the API is what is left
        schemas = {t.name: t.input_schema for t in tools}
        trace: list[dict[str, Any]] = []
        used: set[str] = set()
        for _ in range(max_turns):
            open_actions = [t.name for t in tools if t.name not in used]
            if HTTP_ACTION not in used:
                open_actions.append(HTTP_ACTION)
            tried_both = HTTP_ACTION in used and (not tools or any(t.name in used for t in tools))
            if (tried_both and len(used) >= min_calls) or not open_actions:
                open_actions.append(ANSWER)
            choice = _constrained(
                _prompt(question, tools, trace, "Which action next?"),
                {
                    "type": "object",
                    "properties": {"action": {"enum": open_actions}},
                    "required": ["action"],
                    "additionalProperties": False,
                },
                max_tokens=24,
            )
            action = choice["action"] if isinstance(choice, dict) else open_actions[0]
            if action == ANSWER:
                break
            used.add(action)
            trace.append(self._act(question, tools, trace, action, schemas.get(action), server, api))
        final = _constrained(_prompt(question, tools, trace, "Answer the question."), ANSWER_SCHEMA, 80)
        answer = final["answer"] if isinstance(final, dict) else ""
        return {"answer": answer, "turns": len(trace) + 1, "trace": trace}

    def _act(
        self,
        question: str,
        tools: list[rt.ToolInfo],
        trace: list[dict[str, Any]],
        action: str,
        schema: dict[str, Any] | None,
        server: str,
        api: str,
    ) -> dict[str, Any]:
        ask = f"Give the arguments of {action} as JSON."
        args = _constrained(
            _prompt(question, tools, trace, ask), _bounded(schema) if schema else QUERY_SCHEMA, max_tokens=96
        )
        if not isinstance(args, dict):
            args = {}
        step: dict[str, Any] = {"action": action, "arguments": args}
        try:
            if action == HTTP_ACTION:
                query = str(args.get("query", question))
                sep = "&" if "?" in api else "?"
                resp = rt.http_fetch(f"{api}{sep}q={urllib.parse.quote(query)}")
                step["result"] = f"HTTP {resp.status}: {resp.text()}"
            else:
                result = rt.call_tool(server, action, args)
                step["result"] = ("tool error: " if result.is_error else "") + result.text
        except rt.RealmError as e:
            step["error"], step["message"] = e.code, e.message
        return step
