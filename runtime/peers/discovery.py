"""Which pods are ready to serve each model version: the Kubernetes API's EndpointSlices.

For every Service of `ClusterConfig.models`, the slices labelled `kubernetes.io/service-name=<service>`
in the namespace are listed, then watched from the list's resourceVersion; a watch that ends is
resumed from the last version seen, one the API says is too old (410 Gone) is listed again, and any
error (the API down, a refused token) is retried with backoff while the last known endpoints keep
serving. Only endpoints whose `conditions.ready` is not false are kept (the API says a missing
condition means ready), each with its addresses, its pod's name and the port to call it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from .kube import KubeAccess

log = logging.getLogger(__name__)

#: The EndpointSlice port that names the internal listener, when the Service lists it; otherwise
#: every runtime pod's `ClusterConfig.internalPort`.
INTERNAL_PORT_NAME = "internal"
SERVICE_LABEL = "kubernetes.io/service-name"
# Backoff between failed lists or watches: doubling up to the cap, with jitter so that every pod of a
# namespace does not retry in step after the API comes back.
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
# The API ends a watch after this long; it is then resumed from the last version seen.
WATCH_TIMEOUT_S = 300


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready pod of a Service, as a peer to call."""

    address: str
    port: int
    pod: str

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


class Discovery(Protocol):
    """What the cross-pod path asks of discovery: the ready endpoints of a Service, now."""

    def endpoints(self, service: str) -> Sequence[Endpoint]: ...

    def set_services(self, services: Iterable[str]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StaticDiscovery:
    """A fake at the discovery seam, for unit tests only: a fixed table of endpoints per Service
    (tests change it in place). A cluster's pods come from EndpointSliceDiscovery."""

    def __init__(self, table: Mapping[str, Sequence[Endpoint]] | None = None) -> None:
        self.table: dict[str, list[Endpoint]] = {k: list(v) for k, v in (table or {}).items()}

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        return tuple(self.table.get(service, ()))

    def set_services(self, services: Iterable[str]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def slice_endpoints(obj: Mapping[str, Any], default_port: int) -> list[Endpoint]:
    """The ready endpoints of one EndpointSlice object (an address each: a pod's first address)."""
    port = default_port
    for p in obj.get("ports") or []:
        if isinstance(p, dict) and p.get("name") == INTERNAL_PORT_NAME and isinstance(p.get("port"), int):
            port = p["port"]
    found: list[Endpoint] = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        conditions = ep.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        addresses = [a for a in ep.get("addresses") or [] if isinstance(a, str) and a]
        if not addresses:
            continue
        ref = ep.get("targetRef") or {}
        pod = ref.get("name") if isinstance(ref, dict) and isinstance(ref.get("name"), str) else None
        found.append(Endpoint(addresses[0], port, pod or addresses[0]))
    return found


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class EndpointSliceDiscovery:
    """Ready endpoints of the namespace's Services, kept current by one watch per Service."""

    def __init__(
        self,
        access: Callable[[], KubeAccess],
        namespace: str,
        services: Iterable[str],
        *,
        default_port: int,
    ) -> None:
        # A callable, so that a kubeconfig that cannot be read yet is tried again with the rest.
        self._access_factory = access
        self._access: KubeAccess | None = None
        self.namespace = namespace
        self.default_port = default_port
        self._slices: dict[str, dict[str, list[Endpoint]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set(services)
        self._session: aiohttp.ClientSession | None = None
        self._listed: set[str] = set()
        self.errors = 0  # failed lists and watches, for tests and logs

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        slices = self._slices.get(service, {})
        return tuple(sorted({ep for eps in slices.values() for ep in eps}))

    def synced(self, service: str) -> bool:
        """Whether the Service's first list has arrived."""
        return service in self._listed

    def set_services(self, services: Iterable[str]) -> None:
        """Follow these Services (a config reload): new ones are watched, dropped ones forgotten."""
        self._wanted = set(services)
        if self._session is None:
            return
        for service in list(self._tasks):
            if service not in self._wanted:
                self._tasks.pop(service).cancel()
                self._slices.pop(service, None)
        for service in self._wanted - self._tasks.keys():
            self._tasks[service] = asyncio.create_task(self._follow(service), name=f"slices-{service}")

    async def start(self) -> None:
        # Large slices (many endpoints) arrive as one line of the watch stream.
        self._session = aiohttp.ClientSession(read_bufsize=1 << 20)
        self.set_services(self._wanted)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, service: str) -> str:
        assert self._access is not None
        selector = quote(f"{SERVICE_LABEL}={service}", safe="")
        return (
            f"{self._access.server}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}"
            f"/endpointslices?labelSelector={selector}"
        )

    async def _follow(self, service: str) -> None:
        delay = BACKOFF_FIRST_S
        version: str | None = None
        while True:
            try:
                if self._access is None:
                    self._access = self._access_factory()
                if version is None:
                    version = await self._list(service)
                    self._listed.add(service)
                version = await self._watch(service, version)
                delay = BACKOFF_FIRST_S
            except asyncio.CancelledError:
                raise
            except _Gone:
                version = None
            except Exception as e:
                self.errors += 1
                log.warning("EndpointSlices of %s: %s; again in %.1fs", service, e, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(BACKOFF_CAP_S, delay * 2)
                version = None

    async def _list(self, service: str) -> str:
        assert self._session is not None and self._access is not None
        async with self._session.get(
            self._url(service),
            headers=self._access.headers(),
            ssl=self._access.ssl_context,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"list answered {resp.status}: {(await resp.text())[:200]}")
            doc = await resp.json()
        self._slices[service] = {
            str(item["metadata"]["name"]): slice_endpoints(item, self.default_port)
            for item in doc.get("items") or []
        }
        return str(doc["metadata"]["resourceVersion"])

    async def _watch(self, service: str, version: str) -> str:
        """Apply the watch's events until the API ends it; returns the last version seen."""
        assert self._session is not None and self._access is not None
        url = (
            f"{self._url(service)}&watch=1&allowWatchBookmarks=true"
            f"&timeoutSeconds={WATCH_TIMEOUT_S}&resourceVersion={version}"
        )
        async with self._session.get(
            url,
            headers=self._access.headers(),
            ssl=self._access.ssl_context,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30),
        ) as resp:
            if resp.status == 410:
                raise _Gone()
            if resp.status != 200:
                raise RuntimeError(f"watch answered {resp.status}: {(await resp.text())[:200]}")
            while line := await resp.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                name = str(meta.get("name", ""))
                slices = self._slices.setdefault(service, {})
                if kind in ("ADDED", "MODIFIED"):
                    slices[name] = slice_endpoints(obj, self.default_port)
                elif kind == "DELETED":
                    slices.pop(name, None)
        return version
