"""Vector stores over HTTP against the real embedding model: OpenAI's subset through the official client,
Realm's writes, and what an attacker tries (other tenants' ids, malformed ids, quotas, bad vectors)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import Server

DOCS = {
    "kv": "KV snapshots persist a conversation's attention cache in S3 so a later turn skips the prefill.",
    "egress": "A tenant's module reaches only the hosts its allowlist names; private addresses are refused.",
    "sampler": "A WebAssembly sampler sees the top-k candidates of each step and picks the next token.",
}


def _post(server: Server, path: str, body: dict[str, Any], tenant: str = "acme") -> httpx.Response:
    with server.http() as http:
        return http.post(path, json=body, headers=server.headers(tenant))


def _get(server: Server, path: str, tenant: str = "acme") -> httpx.Response:
    with server.http() as http:
        return http.get(path, headers=server.headers(tenant))


def _store_with_docs(server: Server, tenant: str = "acme") -> str:
    r = _post(server, "/v1/vector_stores", {"name": "docs"}, tenant)
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    texts = [
        {"id": k, "text": v, "metadata": {"topic": k, "year": 2020 + n}}
        for n, (k, v) in enumerate(DOCS.items())
    ]
    r = _post(server, f"/v1/vector_stores/{sid}/texts", {"texts": texts}, tenant)
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ["kv#0", "egress#0", "sampler#0"]
    return sid


def test_the_official_client_creates_and_searches_a_store(server: Server) -> None:
    client = server.client()
    store = client.vector_stores.create(name="docs")
    assert store.id.startswith("vs_") and store.status == "completed"
    texts = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in DOCS.items()]
    assert _post(server, f"/v1/vector_stores/{store.id}/texts", {"texts": texts}).status_code == 200
    page = client.vector_stores.search(store.id, query="Which hosts may a module call?", max_num_results=2)
    hits = list(page)
    assert hits[0].attributes is not None and hits[0].attributes["topic"] == "egress"
    assert hits[0].content[0].text == DOCS["egress"]
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 3
    assert client.vector_stores.delete(store.id).deleted is True


def test_filters_and_the_score_threshold_narrow_a_search(server: Server) -> None:
    sid = _store_with_docs(server)
    body = {"query": "attention cache", "filters": {"type": "gte", "key": "year", "value": 2021}}
    topics = [
        d["attributes"]["topic"]
        for d in _post(server, f"/v1/vector_stores/{sid}/search", body).json()["data"]
    ]
    assert sorted(topics) == ["egress", "sampler"]
    compound = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "topic", "value": "kv"},
            {"type": "in", "key": "topic", "value": ["x"]},
        ],
    }
    r = _post(server, f"/v1/vector_stores/{sid}/search", {"query": "anything", "filters": compound})
    assert [d["attributes"]["topic"] for d in r.json()["data"]] == ["kv"]
    strict = {"query": "attention cache", "ranking_options": {"score_threshold": 0.99}}
    assert _post(server, f"/v1/vector_stores/{sid}/search", strict).json()["data"] == []


def test_a_long_text_is_chunked_and_each_chunk_cites_its_item(server: Server) -> None:
    sid = _post(server, "/v1/vector_stores", {}).json()["id"]
    long = " ".join(f"sentence {i} about topic {i % 7}." for i in range(400))
    r = _post(server, f"/v1/vector_stores/{sid}/texts", {"texts": [{"id": "book", "text": long}]})
    ids = r.json()["ids"]
    assert len(ids) > 3 and ids[0] == "book#0"
    hit = _post(server, f"/v1/vector_stores/{sid}/search", {"query": "sentence 399"}).json()["data"][0]
    assert hit["filename"] == "book" and hit["attributes"]["item_id"] == "book"


def test_another_tenant_cannot_see_read_write_or_delete_a_store(server: Server) -> None:
    sid = _store_with_docs(server, "acme")
    assert sid not in [s["id"] for s in _get(server, "/v1/vector_stores", "beta").json()["data"]]
    missing = _get(server, "/v1/vector_stores/vs_000000000000000000000000", "beta").json()["error"]
    for r in (
        _get(server, f"/v1/vector_stores/{sid}", "beta"),
        _post(server, f"/v1/vector_stores/{sid}/search", {"query": "cache"}, "beta"),
        _post(server, f"/v1/vector_stores/{sid}/texts", {"texts": [{"text": "x"}]}, "beta"),
        _post(server, f"/v1/vector_stores/{sid}/items/delete", {"ids": ["kv#0"]}, "beta"),
    ):
        assert r.status_code == 404
        assert {k: v for k, v in r.json()["error"].items() if k != "message"} == {
            k: v for k, v in missing.items() if k != "message"
        }
    with server.http() as http:
        assert http.delete(f"/v1/vector_stores/{sid}", headers=server.headers("beta")).status_code == 404
    assert _get(server, f"/v1/vector_stores/{sid}", "acme").status_code == 200


@pytest.mark.parametrize("sid", ["..%2F..%2Fx", "vs_zz", "vs_" + "a" * 25, "manifest.json"])
def test_malformed_ids_are_not_found(server: Server, sid: str) -> None:
    assert _get(server, f"/v1/vector_stores/{sid}").status_code == 404
    assert _post(server, f"/v1/vector_stores/{sid}/search", {"query": "x"}).status_code == 404


def test_a_store_of_brought_vectors_searches_exactly_and_refuses_texts(server: Server) -> None:
    sid = _post(server, "/v1/vector_stores", {"dimensions": 3}).json()["id"]
    items = [
        {"id": "x", "vector": [1, 0, 0], "text": "x axis"},
        {"id": "y", "vector": [0, 1, 0], "metadata": {"axis": "y"}},
    ]
    assert _post(server, f"/v1/vector_stores/{sid}/items", {"items": items}).json()["upserted"] == 2
    data = _post(server, f"/v1/vector_stores/{sid}/search", {"query": [0.9, 0.1, 0]}).json()["data"]
    assert [d["file_id"] for d in data] == ["x", "y"] and data[0]["content"][0]["text"] == "x axis"
    r = _post(server, f"/v1/vector_stores/{sid}/texts", {"texts": [{"text": "words"}]})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "texts_not_accepted")
    r = _post(server, f"/v1/vector_stores/{sid}/search", {"query": [1, 0]})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_dimensions")
    deleted = _post(server, f"/v1/vector_stores/{sid}/items/delete", {"ids": ["x", "nope"]}).json()
    assert deleted["deleted"] == 1


@pytest.mark.parametrize(
    ("items", "code"),
    [
        ([{"id": "z", "vector": [0, 0, 0]}], "invalid_vector"),
        ([{"id": "a", "vector": [1, 0, 0]}, {"id": "a", "vector": [0, 1, 0]}], "invalid_id"),
        ([{"id": "a", "vector": [1, 0, 0]}, {"id": "b", "vector": [0, 1]}], "invalid_dimensions"),
        ([{"id": "", "vector": [1, 0, 0]}], "invalid_id"),
        ([{"id": "m", "vector": [1, 0, 0], "metadata": {f"k{i}": i for i in range(17)}}], "invalid_metadata"),
    ],
)
def test_bad_items_are_400s_and_write_nothing(
    server: Server, items: list[dict[str, Any]], code: str | None
) -> None:
    sid = _post(server, "/v1/vector_stores", {"dimensions": 3}).json()["id"]
    r = _post(server, f"/v1/vector_stores/{sid}/items", {"items": items})
    if code is None:  # extreme but finite components are normalised, not overflowed
        assert r.status_code == 200, r.text
        hits = _post(server, f"/v1/vector_stores/{sid}/search", {"query": [1, 1, 0]}).json()["data"]
        assert hits[0]["file_id"] == "huge" and abs(hits[0]["score"] - 1.0) < 1e-5
        return
    assert (r.status_code, r.json()["error"]["code"]) == (400, code)
    assert _get(server, f"/v1/vector_stores/{sid}").json()["file_counts"]["total"] == 0


def test_extreme_but_finite_components_are_normalised_not_overflowed(server: Server) -> None:
    sid = _post(server, "/v1/vector_stores", {"dimensions": 3}).json()["id"]
    items = [{"id": "huge", "vector": [1e30, 1e30, 0]}, {"id": "tiny", "vector": [1e-30, 0, 0]}]
    assert _post(server, f"/v1/vector_stores/{sid}/items", {"items": items}).status_code == 200
    hits = _post(server, f"/v1/vector_stores/{sid}/search", {"query": [1, 1, 0]}).json()["data"]
    assert hits[0]["file_id"] == "huge" and abs(hits[0]["score"] - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "x", "max_num_results": 0}, "invalid_k"),
        ({"query": "x", "max_num_results": 101}, "invalid_k"),
        ({"query": "   "}, "invalid_input"),
        ({"query": "x", "ranking_options": {"score_threshold": 2}}, "invalid_threshold"),
    ],
)
def test_bad_searches_are_400s(server: Server, body: dict[str, Any], code: str) -> None:
    sid = _post(server, "/v1/vector_stores", {}).json()["id"]
    r = _post(server, f"/v1/vector_stores/{sid}/search", body)
    assert (r.status_code, r.json()["error"]["code"]) == (400, code)


def test_a_filter_nested_too_deep_is_refused(server: Server) -> None:
    sid = _post(server, "/v1/vector_stores", {}).json()["id"]
    f: dict[str, Any] = {"type": "eq", "key": "a", "value": 1}
    for _ in range(9):
        f = {"type": "and", "filters": [f]}
    r = _post(server, f"/v1/vector_stores/{sid}/search", {"query": "x", "filters": f})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_filter")


def test_the_tenants_vector_limits_refuse_a_write_whole(server: Server) -> None:
    for s in _get(server, "/v1/vector_stores", "tiny").json()["data"]:
        with server.http() as http:
            http.delete(f"/v1/vector_stores/{s['id']}", headers=server.headers("tiny"))
    sid = _post(server, "/v1/vector_stores", {"dimensions": 2}, "tiny").json()["id"]
    second = _post(server, "/v1/vector_stores", {"dimensions": 2}, "tiny")
    assert (second.status_code, second.json()["error"]["code"]) == (429, "vector_store_quota_exceeded")
    items = [{"id": f"i{n}", "vector": [1, n]} for n in range(4)]
    r = _post(server, f"/v1/vector_stores/{sid}/items", {"items": items}, "tiny")
    assert (r.status_code, r.json()["error"]["code"]) == (429, "vector_quota_exceeded")
    assert _get(server, f"/v1/vector_stores/{sid}", "tiny").json()["file_counts"]["total"] == 0
    assert _post(server, f"/v1/vector_stores/{sid}/items", {"items": items[:3]}, "tiny").status_code == 200


def test_listing_pages_as_openai_cuts_them(server: Server) -> None:
    client = server.client("beta")
    made = {client.vector_stores.create(name=f"page-{n}").id for n in range(5)}
    whole = [s["id"] for s in _get(server, "/v1/vector_stores?limit=100", "beta").json()["data"]]
    assert made <= set(whole)
    # The official client walks the pages by `after` = the last id of each.
    assert [s.id for s in client.vector_stores.list(limit=2)] == whole
    asc = _get(server, "/v1/vector_stores?limit=100&order=asc", "beta").json()
    assert [s["id"] for s in asc["data"]] == whole[::-1]
    first = _get(server, "/v1/vector_stores?limit=2", "beta").json()
    assert first["has_more"] is True and [s["id"] for s in first["data"]] == whole[:2]
    assert (first["first_id"], first["last_id"]) == (whole[0], whole[1])
    before = _get(server, f"/v1/vector_stores?limit=100&before={whole[3]}", "beta").json()
    assert [s["id"] for s in before["data"]] == whole[:3] and before["has_more"] is False
    between = _get(server, f"/v1/vector_stores?after={whole[0]}&before={whole[3]}", "beta").json()
    assert [s["id"] for s in between["data"]] == whole[1:3]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("after=vs_000000000000000000000000", "after"),  # no such store in this listing
        ("before=..%2Fx", "before"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("order=sideways", "order"),
    ],
)
def test_bad_listing_parameters_are_400s(server: Server, query: str, param: str) -> None:
    r = _get(server, f"/v1/vector_stores?{query}", "beta")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_another_tenants_store_is_no_cursor(server: Server) -> None:
    sid = server.client("acme").vector_stores.create(name="not-yours").id
    r = _get(server, f"/v1/vector_stores?after={sid}", "beta")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
