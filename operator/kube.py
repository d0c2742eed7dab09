"""A thin, typed client for the handful of kinds the operator touches, over the official `kubernetes` client.

Why not the generated typed APIs: they turn objects into model classes, while the builders and the
reconcile planner work on plain dicts (the manifests), and server-side apply wants the manifest as is.
Why not the DynamicClient: its discovery caches to disk and costs a round of requests per start; the
kinds here are fixed, so a static table of paths is enough.

Every call is synchronous: kopf runs sync handlers in its thread pool, so they never block its loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from realm.operator.objects import FIELD_MANAGER, ObjectKey

Obj = dict[str, Any]
USER_AGENT = "realm-operator"
POOL_SIZE = 192


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        """The API path of an object or (no name) a collection; `namespace` None: cluster-wide (a
        cluster-scoped kind, or every namespace's objects of a namespaced one)."""
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        scope = f"/namespaces/{namespace}" if namespace is not None else ""
        out = f"{base}{scope}/{self.plural}"
        if name is not None:
            out += f"/{name}"
        if sub is not None:
            out += f"/{sub}"
        return out


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Secret": Kind("", "v1", "secrets"),
    "Service": Kind("", "v1", "services"),
    "Deployment": Kind("apps", "v1", "deployments"),
    "Pod": Kind("", "v1", "pods"),
    "EndpointSlice": Kind("discovery.k8s.io", "v1", "endpointslices"),
    "HTTPRoute": Kind("gateway.networking.k8s.io", "v1", "httproutes"),
    "Tenant": Kind("realm.dev", "v1alpha1", "tenants"),
    "Model": Kind("realm.dev", "v1alpha1", "models"),
    "ModelPool": Kind("realm.dev", "v1alpha1", "modelpools"),
    "Pipeline": Kind("realm.dev", "v1alpha1", "pipelines"),
    # kopf's peering (leader election) objects: one per watched namespace, or one cluster-wide.
    "KopfPeering": Kind("kopf.dev", "v1", "kopfpeerings"),
    "ClusterKopfPeering": Kind("kopf.dev", "v1", "clusterkopfpeerings"),
}


def peering_kind(clusterwide: bool) -> Kind:
    return KINDS["ClusterKopfPeering" if clusterwide else "KopfPeering"]


class Kube:
    """Reads and writes through one ApiClient; counts writes so tests can assert a pass wrote nothing."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()
        # Tells the operator's own requests apart in audit logs and apiserver metrics (kopf's say "kopf/").
        self.api.user_agent = USER_AGENT
        self.writes: list[str] = []  # "VERB Kind/name", appended by every mutating call
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account when there is one, else $KUBECONFIG / ~/.kube/config."""
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
        # As many pooled connections as threads that may call at once (kopf's handler threads, the two
        # work queues' workers, the Model passes' concurrent requests): a full pool drops connections,
        # and every new one costs a TLS handshake.
        cfg.connection_pool_maxsize = POOL_SIZE
        return cls(client.ApiClient(cfg))

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        resp = self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        data = resp.data
        return json.loads(data) if data else {}

    def _wrote(self, verb: str, kind: str, name: str) -> None:
        with self._lock:
            self.writes.append(f"{verb} {kind}/{name}")

    # Reads ----------------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("GET", KINDS[kind].path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[Obj]:
        """Items of a kind, with apiVersion and kind filled in (list responses omit them per item)."""
        k = KINDS[kind]
        query = [("labelSelector", label_selector)] if label_selector else []
        try:
            items = self._call("GET", k.path(namespace), query=query).get("items") or []
        except ApiException as e:
            if e.status == 404:  # the API itself is not served (e.g. no Gateway API CRDs)
                return []
            raise
        for item in items:
            item.setdefault("apiVersion", k.api_version)
            item.setdefault("kind", kind)
        return list(items)

    def read(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Obj:
        """GET any API path (e.g. a collection with a field selector), decoded."""
        return self._call("GET", path, query=[*query])

    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the apiserver serves a resource, e.g. ("gateway.networking.k8s.io/v1", "httproutes")."""
        try:
            doc = self._call("GET", f"/apis/{group_version}")
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in doc.get("resources") or [])

    # Writes ---------------------------------------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> Obj:
        """Server-side apply as `realm-operator`, forcing conflicts: these fields are ours by design."""
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        out = self._call(
            "PATCH",
            KINDS[kind].path(meta["namespace"], meta["name"]),
            body=dict(manifest),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        self._wrote("apply", kind, meta["name"])
        return out

    def create(self, manifest: Mapping[str, Any]) -> Obj | None:
        """Create; None when it already exists (someone, maybe our previous pass, was first)."""
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        try:
            out = self._call(
                "POST",
                KINDS[kind].path(meta["namespace"]),
                body=dict(manifest),
                query=[("fieldManager", FIELD_MANAGER)],
            )
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        self._wrote("create", kind, meta["name"])
        return out

    def delete(self, key: ObjectKey) -> None:
        try:
            # Background: the garbage collector removes the Deployment's ReplicaSets and pods.
            self._call(
                "DELETE",
                KINDS[key.kind].path(key.namespace, key.name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as e:
            if e.status != 404:
                raise
        self._wrote("delete", key.kind, key.name)

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> Obj | None:
        """Merge-patch the status subresource only: spec belongs to the user (and to Git). None when the
        object is gone (deleted since the pass read it): a status for it has nowhere to go."""
        try:
            out = self._call(
                "PATCH",
                KINDS[kind].path(namespace, name, "status"),
                body={"status": dict(status)},
                query=[("fieldManager", FIELD_MANAGER)],
                content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        self._wrote("status", kind, name)
        return out
