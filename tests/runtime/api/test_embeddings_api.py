"""POST /v1/embeddings against the real embedding model (all-MiniLM-L6-v2, int8 ONNX), through the
official `openai` client and as an attacker would call it."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from conftest import EMBEDDING_MODEL, MODEL, Server


def test_the_official_client_gets_unit_vectors_in_input_order(server: Server) -> None:
    texts = ["The cat sat on the mat.", "A feline rested on a rug.", "Kubernetes reconciles resources."]
    r = server.client().embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert r.object == "list" and r.model == EMBEDDING_MODEL
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    # Paraphrases are nearer each other than either is to an unrelated sentence.
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.3
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0


def test_float_and_base64_carry_the_same_vector(server: Server) -> None:
    body = {"model": EMBEDDING_MODEL, "input": "retrieval augmented generation"}
    with server.http() as http:
        f = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}, headers=server.headers())
        b = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=server.headers())
    assert f.status_code == 200 and b.status_code == 200
    floats = np.array(f.json()["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(b.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(floats, decoded)


def test_a_string_input_is_one_embedding_and_the_same_as_in_a_list(server: Server) -> None:
    client = server.client()
    one = client.embeddings.create(model=EMBEDDING_MODEL, input="hello world").data
    listed = client.embeddings.create(model=EMBEDDING_MODEL, input=["x", "hello world"]).data
    assert len(one) == 1
    assert np.allclose(one[0].embedding, listed[1].embedding, atol=1e-5)


def test_dimensions_equal_to_the_models_is_accepted(server: Server) -> None:
    r = server.client().embeddings.create(model=EMBEDDING_MODEL, input="x", dimensions=384)
    assert len(r.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": "x", "dimensions": 128}, "invalid_dimensions", "dimensions"),
        ({"input": []}, "invalid_input", "input"),
        ({"input": ["ok", ""]}, "invalid_input", "input"),
        ({"input": ["x"] * 257}, "invalid_input", "input"),
    ],
)
def test_bad_inputs_are_400s_naming_the_field(
    server: Server, body: dict[str, object], code: str, param: str
) -> None:
    with server.http() as http:
        r = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, **body}, headers=server.headers())
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["param"]) == (code, param)


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_token_id_inputs_are_refused_with_a_clear_message(server: Server, tokens: object) -> None:
    with server.http() as http:
        r = http.post(
            "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": tokens}, headers=server.headers()
        )
    assert r.status_code == 400
    assert "token ids are not accepted" in r.json()["error"]["message"]


def test_a_text_longer_than_the_server_bound_is_refused(server: Server) -> None:
    limit = server.runtime.state.max_text_chars
    with server.http() as http:
        r = http.post(
            "/v1/embeddings",
            json={"model": EMBEDDING_MODEL, "input": ["a " * (limit // 4), "b " * (limit // 4 + 8)]},
            headers=server.headers(),
        )
    assert r.status_code in (400, 413)  # the body bound may refuse it before the field check
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_generation_model_is_not_an_embedding_model(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().embeddings.create(model=MODEL, input="x")
    assert e.value.code == "model_not_embedding"


def test_an_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        server.client().embeddings.create(model="no-such-embedder", input="x")
    assert e.value.code == "model_not_found"


def test_a_tenant_not_allowed_the_model_is_refused(server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        server.client("limited").embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert e.value.code == "model_not_allowed"


def test_the_embedding_model_is_not_a_chat_model(server: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(
            model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def test_rate_quotas_apply_to_embeddings(server: Server) -> None:
    client = server.client("embedlimited")
    statuses = []
    for _ in range(3):
        try:
            client.embeddings.create(model=EMBEDDING_MODEL, input="x")
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
    assert 429 in statuses


def test_long_inputs_are_truncated_to_the_models_window_and_charged_for_what_it_read(server: Server) -> None:
    r = server.client().embeddings.create(model=EMBEDDING_MODEL, input="word " * 2000)
    assert r.usage.prompt_tokens == 256
