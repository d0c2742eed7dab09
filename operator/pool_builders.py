"""Pure functions from a ModelPool and its member Models to the objects that run them together.

Like builders.py: no cluster, no clock, fixed order, so a pass over an unchanged world writes nothing.

Layout per ModelPool `p` (owned by it):
- ConfigMap `p-pool-config`: the RuntimeConfig its pods read: every serving version of every member
  Model (members sorted by name, versions in the Model's order), the union of the tenants allowed to use
  a member, the published pipelines with a step on a member, and the namespace's placement (`cluster`);
- Service `p-pool` over all its pods (its `metrics` port is what the chart's pool ServiceMonitor
  scrapes; the members' version Services leave that port out, so each pod is scraped once);
- Deployment `p-pool`: one runtime pod template for all of them, labelled `realm.dev/pool: p` (its
  selector) and, per member, `serves.realm.dev/<model>` and `serves.realm.dev/<model>.<version>` per
  serving version: the member Models' own Services select on those (builders.service_selector), so
  each version's EndpointSlices list the pool's pods;
- Secret `p-pool-identity`: the namespace's identity secret for its pods (builders.identity_secret).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from realm.operator.builders import (
    IDENTITY_KEY,
    METRICS_PORT,
    PORT,
    SERVES_VALUE,
    BuildOptions,
    Manifest,
    ModelResource,
    PodPlan,
    PublishedTenant,
    config_map_of,
    identity_env_from,
    model_config,
    runtime_deployment,
    serves_label,
    serves_tenant,
    shared_store,
    tenant_entries,
)
from realm.runtime.spec.embedding import EmbeddingModelConfig
from realm.runtime.spec.identity import namespace_secret
from realm.runtime.spec.model import MODEL_NAME_PATTERN
from realm.runtime.spec.pool import ModelPoolSpec
from realm.runtime.spec.runtime_config import (
    ClusterConfig,
    ConversationsConfig,
    PipelineEntry,
    RuntimeConfig,
    VectorsConfig,
)
from realm.runtime.spec.status import API_VERSION

LABEL_POOL = "realm.dev/pool"


@dataclass(frozen=True)
class PoolResource:
    """The parts of a ModelPool object the builders use, with its members (sorted by name)."""

    name: str
    namespace: str
    uid: str
    spec: ModelPoolSpec
    members: tuple[ModelResource, ...] = ()
    # The autoscaler's replica count, as the pool's status records it.
    autoscaled: int | None = None

    def __post_init__(self) -> None:
        if not re.match(MODEL_NAME_PATTERN, self.name):
            raise ValueError(f"pool name {self.name!r} must match {MODEL_NAME_PATTERN}")
        names = [m.name for m in self.members]
        if names != sorted(names):
            raise ValueError("pool members must be sorted by name")


def deployment_name(pool: PoolResource) -> str:
    return f"{pool.name}-pool"


def config_map_name(pool: PoolResource) -> str:
    return f"{pool.name}-pool-config"


def identity_secret_name(pool: PoolResource) -> str:
    return f"{pool.name}-pool-identity"


def owner_reference(pool: PoolResource) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelPool",
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(pool: PoolResource, opts: BuildOptions) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "realm-runtime",
        "app.kubernetes.io/instance": pool.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "realm",
        "app.kubernetes.io/managed-by": "realm-operator",
        LABEL_POOL: pool.name,
    }
    out.update(dict(opts.extra_labels))
    return dict(sorted(out.items()))


def selector(pool: PoolResource) -> dict[str, str]:
    # Never changes for the pool's pods (a Deployment's selector is immutable): members come and go.
    return {LABEL_POOL: pool.name}


def pool_selector(name: str) -> str:
    """Label selector listing what a pool owns."""
    return f"{LABEL_POOL}={name}"


def served(pool: PoolResource) -> list[tuple[ModelResource, str]]:
    """Every (member, serving version) the pool's pods load, members by name, versions in spec order."""
    return [(m, v.name) for m in pool.members for v in m.spec.versions if v.name in m.spec.serving_versions()]


def pod_labels(pool: PoolResource, opts: BuildOptions) -> dict[str, str]:
    out = labels(pool, opts)
    for m, version in served(pool):
        out[serves_label(m.name)] = SERVES_VALUE
        out[serves_label(m.name, version)] = SERVES_VALUE
    return dict(sorted(out.items()))


def _metadata(name: str, pool: PoolResource, opts: BuildOptions) -> Manifest:
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": labels(pool, opts),
        "ownerReferences": [owner_reference(pool)],
    }


def runtime_config(
    pool: PoolResource,
    tenants: Iterable[PublishedTenant],
    opts: BuildOptions,
    pipelines: Iterable[PipelineEntry] = (),
    cluster: ClusterConfig | None = None,
) -> RuntimeConfig:
    """The document the pool's pods read: every served version of every member, the tenants allowed to
    use any member, and the published pipelines of those tenants with a step on a member."""
    members = {m.name for m in pool.members}
    allowed = [t for t in tenants if any(serves_tenant(m, t.spec) for m in pool.members)]
    names = {t.name for t in allowed}
    listed = sorted(
        (p for p in pipelines if p.tenant in names and any(s.model_name in members for s in p.steps)),
        key=lambda p: p.name,
    )
    return RuntimeConfig(
        models=[model_config(m, v, gpus=pool.spec.resources.gpu) for m, v in served(pool)],
        embeddings=pool_embeddings(pool),
        tenants=tenant_entries(allowed),
        pipelines=listed,
        modules_dir=opts.modules_dir,
        conversations=ConversationsConfig(backend="s3") if shared_store(opts) else ConversationsConfig(),
        vectors=VectorsConfig(backend="s3") if shared_store(opts) else VectorsConfig(),
        cluster=cluster,
        egress=opts.egress,
    )


def pool_embeddings(pool: PoolResource) -> list[EmbeddingModelConfig]:
    """The members' embedding models, each name once (the first member's, by name)."""
    out: dict[str, EmbeddingModelConfig] = {}
    for m in pool.members:
        for e in m.spec.embeddings:
            out.setdefault(e.name, e)
    return list(out.values())


def config_map(
    pool: PoolResource,
    tenants: Iterable[PublishedTenant],
    opts: BuildOptions,
    pipelines: Iterable[PipelineEntry] = (),
    cluster: ClusterConfig | None = None,
) -> Manifest:
    config = runtime_config(pool, tenants, opts, pipelines, cluster)
    return config_map_of(_metadata(config_map_name(pool), pool, opts), config)


def replicas(pool: PoolResource) -> int:
    """The spec's replicas, or the autoscaler's choice within its bounds."""
    scaling = pool.spec.autoscaling
    if scaling is not None:
        chosen = pool.autoscaled if pool.autoscaled is not None else scaling.min_replicas
        return int(max(scaling.min_replicas, min(scaling.max_replicas, chosen)))
    return pool.spec.replicas if pool.spec.replicas is not None else 1


def _weights(pool: PoolResource) -> tuple[tuple[Manifest, Manifest], ...]:
    """One read-only volume per claim the served versions name (pvc://<claim>/...), at /models/<claim>:
    the path builders.model_config gives the runtime."""
    claims = sorted(
        {
            v.source.removeprefix("pvc://").partition("/")[0]
            for m, name in served(pool)
            for v in m.spec.versions
            if v.name == name and v.source.startswith("pvc://")
        }
    )
    out: list[tuple[Manifest, Manifest]] = []
    for i, claim in enumerate(claims):
        volume = {"name": f"weights-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        out.append((volume, {"name": f"weights-{i}", "mountPath": f"/models/{claim}", "readOnly": True}))
    return tuple(out)


def deployment(pool: PoolResource, tenants: Iterable[PublishedTenant], opts: BuildOptions) -> Manifest:
    spec = pool.spec
    config = runtime_config(pool, tenants, opts)
    trtllm = any(v.engine == "trtllm" for m, name in served(pool) for v in m.spec.versions if v.name == name)
    return runtime_deployment(
        PodPlan(
            metadata=_metadata(deployment_name(pool), pool, opts),
            selector=selector(pool),
            pod_labels=pod_labels(pool, opts),
            config_map=config_map_name(pool),
            config=config,
            weights=_weights(pool),
            resources=spec.resources,
            node_selector=spec.node_selector,
            tolerations=tuple(spec.tolerations),
            wants_gpu=trtllm or spec.resources.gpu >= 1,
            identity_env=tuple(identity_env_from(identity_secret_name(pool), pool.namespace, opts)),
            replicas=replicas(pool),
        ),
        opts,
    )


def service(pool: PoolResource, opts: BuildOptions) -> Manifest:
    """Every pod of the pool: its `metrics` port is what the chart's pool ServiceMonitor scrapes (the
    members' version Services leave that port out, so each pod is scraped once)."""
    ports = [
        {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(deployment_name(pool), pool, opts),
        "spec": {"type": "ClusterIP", "selector": selector(pool), "ports": ports},
    }


def identity_secret(pool: PoolResource, opts: BuildOptions) -> Manifest | None:
    """The pool's pods' identity secret (their namespace's), owned by the pool; None without an
    installation secret. Created once, never rewritten (operator/identity.py)."""
    if not opts.installation_secret:
        return None
    value = namespace_secret(opts.installation_secret, pool.namespace)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": identity_secret_name(pool),
            "namespace": pool.namespace,
            "labels": {"app.kubernetes.io/managed-by": "realm-operator", LABEL_POOL: pool.name},
            "ownerReferences": [owner_reference(pool)],
        },
        "data": {IDENTITY_KEY: base64.b64encode(value.encode()).decode()},
    }


def build_all(
    pool: PoolResource,
    tenants: Sequence[PublishedTenant],
    opts: BuildOptions,
    pipelines: Sequence[PipelineEntry] = (),
    cluster: ClusterConfig | None = None,
) -> list[Manifest]:
    """Everything the pool owns (its ConfigMap, its Deployment, its Service); nothing while it has no
    members, since pods without a model serve nothing."""
    if not pool.members:
        return []
    return [
        config_map(pool, tenants, opts, pipelines, cluster),
        deployment(pool, tenants, opts),
        service(pool, opts),
    ]
