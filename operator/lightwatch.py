"""A plain watch of one kind, on a thread of its own, outside kopf.

Why a second watch when kopf already watches Tenants: kopf spends about a millisecond and a half of its
event loop on every watch event (its indexes, per-object workers, handler selection), and in a burst of
a thousand new Tenants plus their Secrets' and statuses' events that loop falls seconds behind the
apiserver. The one thing that has to be quick, creating a new Tenant's API key, needs only a name, a
uid and a spec: reading them off the stream costs a few tens of microseconds an event. This watch does
that and nothing else; kopf's watch stays the source of truth for everything (indexes, statuses,
deletions, the listing at start).

By default it starts from "now" (the first listing's resourceVersion; what existed before is kopf's
start-up listing's job); with `initial`, the first listing's items are delivered too, as ADDED events
(for state that must be known, like the peering). It resumes from the last resourceVersion it saw after
a timeout or a dropped connection. When the apiserver says that version is too old (410 Gone, e.g. after
it restarted) it lists again and delivers every item as ADDED, since some may have been created in the
gap: consumers take an ADDED for an object they know as a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from realm.operator.kube import Kube

log = logging.getLogger("realm.operator.lightwatch")

Event = Callable[[str, Mapping[str, Any]], None]  # (type, object)


class LightWatch:
    """Calls `on_event(type, object)` for every event of one collection, from a daemon thread."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        on_event: Event,
        *,
        query: Sequence[tuple[str, str]] = (),
        initial: bool = False,
        name: str = "lightwatch",
        server_timeout: int = 60,
        retry: float = 1.0,
    ) -> None:
        self._kube = kube
        self._path = path  # a collection: /apis/<g>/<v>/namespaces/<ns>/<plural> or cluster-wide
        self._query = list(query)  # e.g. a fieldSelector
        self._initial = initial
        self._on_event = on_event
        self._server_timeout = server_timeout
        self._retry = retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._resp: Any = None  # the open watch response, shut down by stop()
        self.version: str | None = None  # where the next watch resumes; None: list first
        self.watching = threading.Event()  # set once the first watch request is open
        self.events = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread soon: the open watch is shut down, not waited out."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # already closed
                resp.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _list(self, deliver: bool) -> str:
        """List (delivering the items as ADDED when `deliver`); the collection's resourceVersion."""
        # Only the resourceVersion is wanted otherwise: limit=1 spares the apiserver the items.
        query = self._query + ([] if deliver else [("limit", "1")])
        listing = self._kube.read(self._path, query)
        if deliver:
            for item in listing.get("items") or []:
                self._deliver("ADDED", item)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _deliver(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.events += 1
        try:
            self._on_event(kind, obj)
        except Exception:
            log.exception("light watch of %s: handling a %s event failed", self._path, kind)

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                if self.version is None:
                    self.version = self._list(deliver=self._initial or not first)
                    first = False
                self._stream(self.version)
            except ApiException as e:
                if e.status == 410:  # too old: list again
                    self.version = None
                    continue
                log.debug("light watch of %s: %s %s", self._path, e.status, e.reason)
                time.sleep(self._retry)
            except Exception as e:  # a dropped connection, an apiserver restart: resume
                log.debug("light watch of %s: %s", self._path, e)
                time.sleep(self._retry)

    def _stream(self, version: str) -> None:
        """One watch request from `version`, until the server ends it; `self.version` follows the events."""
        resp = self._kube.api.call_api(
            self._path,
            "GET",
            query_params=[
                *self._query,
                ("watch", "1"),
                ("resourceVersion", version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(self._server_timeout)),
            ],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=(10, self._server_timeout + 30),
        )
        self._resp = resp
        if not self.watching.is_set():
            log.info("light watch of %s: watching", self._path)
            self.watching.set()
        try:
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                if self._stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    self.version = (obj.get("metadata") or {}).get("resourceVersion") or self.version
                    if kind != "BOOKMARK":
                        self._deliver(str(kind), obj)
        finally:
            self._resp = None
            resp.release_conn()
