"""The S3 store's compare-and-swap probe: a server must honour If-None-Match *and* If-Match on PutObject, or
the runtime refuses it at start; deletes carry If-Match where the server honours it.

`ConditionalS3` below is a fake S3 server, a seam: real S3-compatible servers that ignore conditions (older
MinIO, Ceph RGW, other stores) cannot be started here, and a fake is the only way to have one. It speaks
just enough of S3's path-style REST for boto3 (PutObject, GetObject, HeadObject, DeleteObject) and honours
exactly the conditions it is told to. The rest run against real MinIO (tests/s3server.py)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import pytest

from realm.runtime.conversations import StoreUnavailable, open_store
from realm.runtime.conversations.s3_store import S3ConversationStore, make_client
from realm.runtime.serving.vectors import open_collections
from realm.runtime.spec.runtime_config import ConversationsConfig, VectorsConfig
from realm.runtime.vectors.objects import ConditionalWritesIgnored, S3Objects

ALL = frozenset({"put-if-none-match", "put-if-match", "delete-if-match"})


class ConditionalS3:
    """A fake S3 (see the module's docstring): objects in a dict, the conditions in `honour` honoured."""

    def __init__(self, honour: frozenset[str]) -> None:
        self.honour = honour
        self.objects: dict[str, bytes] = {}
        self.deletes: list[dict[str, str]] = []  # the headers of each DeleteObject
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _etag(self, body: bytes) -> str:
                return f'"{hashlib.md5(body).hexdigest()}"'  # S3's ETag of a single-part object

            def _send(self, status: int, body: bytes = b"", etag: str | None = None) -> None:
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _precondition_failed(self) -> None:
                body = b"<Error><Code>PreconditionFailed</Code><Message>no</Message></Error>"
                self._send(412, body)

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                current = store.objects.get(self.path)
                creating = self.headers.get("If-None-Match") == "*"
                if "put-if-none-match" in store.honour and creating and current is not None:
                    return self._precondition_failed()
                expected = self.headers.get("If-Match")
                stale = expected is not None and (current is None or self._etag(current) != expected)
                if "put-if-match" in store.honour and stale:
                    return self._precondition_failed()
                store.objects[self.path] = body
                self._send(200, etag=self._etag(body))

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if "list-type" in parse_qs(url.query):
                    return self._list(url.path, parse_qs(url.query).get("prefix", [""])[0])
                current = store.objects.get(self.path)
                if current is None:
                    return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
                self._send(200, current, etag=self._etag(current))

            def _list(self, bucket_path: str, prefix: str) -> None:
                """ListObjectsV2, one page: what a listing of a tenant's conversations needs."""
                root = bucket_path.rstrip("/") + "/"
                now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())  # every object: just written
                items = "".join(
                    f"<Contents><Key>{escape(path[len(root) :])}</Key><Size>{len(body)}</Size>"
                    f"<LastModified>{now}</LastModified></Contents>"
                    for path, body in sorted(store.objects.items())
                    if path.startswith(root + prefix)
                )
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                    f"<Prefix>{escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
                )
                self._send(200, xml.encode())

            def do_HEAD(self) -> None:
                current = store.objects.get(self.path)
                self.send_response(404 if current is None else 200)
                if current is not None:
                    self.send_header("ETag", self._etag(current))
                self.send_header("Content-Length", str(len(current or b"")))
                self.end_headers()

            def do_DELETE(self) -> None:
                store.deletes.append(dict(self.headers.items()))
                current = store.objects.get(self.path)
                expected = self.headers.get("If-Match")
                stale = expected is not None and (current is None or self._etag(current) != expected)
                if "delete-if-match" in store.honour and stale:
                    return self._precondition_failed()
                store.objects.pop(self.path, None)
                self._send(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fake(honour: frozenset[str]) -> Iterator[ConditionalS3]:
    server = ConditionalS3(honour)
    try:
        yield server
    finally:
        server.close()


def config(endpoint: str) -> ConversationsConfig:
    return ConversationsConfig(backend="s3", bucket="b", endpoint=endpoint, region="us-east-1")


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    for name in ("REALM_S3_BUCKET", "REALM_S3_ENDPOINT", "REALM_S3_REGION"):
        monkeypatch.delenv(name, raising=False)


def test_a_server_that_ignores_every_condition_is_refused_at_start() -> None:
    for server in fake(frozenset()):
        with pytest.raises(StoreUnavailable, match="ignores conditional writes"):
            open_store(config(server.endpoint), Path("unused-by-s3"))


def test_a_server_that_ignores_if_match_is_refused_at_start() -> None:
    for server in fake(frozenset({"put-if-none-match"})):
        with pytest.raises(StoreUnavailable, match=r"\(If-Match on PutObject\)"):
            open_store(config(server.endpoint), Path("unused-by-s3"))


async def test_deletes_carry_if_match_where_the_server_honours_it() -> None:
    for server in fake(ALL):
        store = open_store(config(server.endpoint), Path("unused-by-s3"))
        assert isinstance(store, S3ConversationStore) and store.conditional_deletes
        c = await store.create("acme")
        await store.delete("acme", c.id)
        etag = f'"{hashlib.md5(c.model_dump_json().encode()).hexdigest()}"'
        assert server.deletes[-1].get("If-Match") == etag
        await store.close()


async def test_real_minio_refuses_a_replace_with_a_wrong_etag(s3_bucket: Any) -> None:
    store = S3ConversationStore(
        make_client(s3_bucket.endpoint, s3_bucket.region, s3_bucket.access_key, s3_bucket.secret_key),
        s3_bucket.bucket,
    )
    store.verify_at_start()
    c = await store.create("acme")
    assert not store._replace(c, '"00000000000000000000000000000000"')
    await store.close()


# Vector collections (runtime/vectors/objects.py) are held to the same probe, on the same fake server.


def vectors_config(endpoint: str) -> VectorsConfig:
    return VectorsConfig(backend="s3", bucket="b", endpoint=endpoint, region="us-east-1")


@pytest.mark.parametrize("honour", [frozenset(), frozenset({"put-if-none-match"})])
def test_collections_refuse_a_server_that_ignores_conditional_writes(honour: frozenset[str]) -> None:
    for server in fake(honour):
        with pytest.raises(ConditionalWritesIgnored, match="ignores conditional writes"):
            open_collections(vectors_config(server.endpoint), Path("unused-by-s3"))
        assert not [k for k in server.objects if "cas-probe" in k], "the probe object is left behind"


def test_collections_open_on_a_server_that_honours_them_and_write_conditionally() -> None:
    for server in fake(ALL):
        store = open_collections(vectors_config(server.endpoint), Path("unused-by-s3"))
        made = store.create("owner", name="docs", dims=4, model=None, metadata={})
        assert [m.id for m in store.list("owner")] == [made.id]


def test_collections_on_an_unreachable_server_are_checked_before_their_first_write() -> None:
    for server in fake(frozenset()):
        endpoint = server.endpoint
    store = open_collections(vectors_config(endpoint), Path("unused-by-s3"))  # the server is gone: no check
    for server in fake(frozenset()):
        assert isinstance(store.objects, S3Objects)
        store.objects.client = make_client(server.endpoint, "us-east-1")
        with pytest.raises(ConditionalWritesIgnored):
            store.create("owner", name="docs", dims=4, model=None, metadata={})
