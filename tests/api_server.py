"""A loopback HTTP server standing for an external API, for the agent tests and bench.

`GET /search?q=...` answers JSON {"query": q, "results": [...]} with a canned fact (the capital and
weather of a few cities, whatever the query asks) and records each query; anything else is 404.

    with api_server() as api:
        api.url       # http://127.0.0.1:<port>/search
        api.queries   # ["Paris weather", ...], in the order they arrived
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FACT = "Paris is the capital of France; today it is sunny there."


@dataclass
class ApiServerHandle:
    url: str
    queries: list[str] = field(default_factory=list)


def _handler(handle: ApiServerHandle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path != "/search":
                self.send_error(404)
                return
            query = urllib.parse.parse_qs(parts.query).get("q", [""])[0]
            handle.queries.append(query)
            body = json.dumps({"query": query, "results": [FACT]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests read `queries`, not stderr

    return Handler


@contextmanager
def api_server() -> Iterator[ApiServerHandle]:
    """The server on 127.0.0.1 (a free port) in a thread until the block ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ApiServerHandle("")))
    handle = ApiServerHandle(f"http://127.0.0.1:{httpd.server_address[1]}/search")
    httpd.RequestHandlerClass = _handler(handle)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handle
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
