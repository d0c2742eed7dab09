"""Pure functions from a Model (and the tenants allowed to use it) to the Kubernetes objects that serve it.

No cluster access and no kopf: the handlers call these, compare the result with what is in the cluster
and write only the difference. That only works if the output is a function of the input alone, so
nothing here reads the clock, the environment or random sources, lists come out in a fixed order, and
the ConfigMap text is dumped with sorted keys.

Layout per Model `m` with versions `v`:
- ConfigMap `m-v-config`: the RuntimeConfig document (`config.yaml`) the pods read: the version, the
  tenants allowed to use `m`, and the published pipelines (see `reconcile.published_pipelines`) that
  have a step on `m`;
- Deployment `m-v` and Service `m-v` per version;
- either an HTTPRoute `m` splitting traffic by weight across the version Services (when a Gateway is
  given), or a Service `m` selecting every version's pods (the split then follows ready replicas:
  versions with weight 0 run no replicas, the others run the same number).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from realm.runtime.serving.module_sources import CONFIGMAP_KEY, CONFIGMAP_SUBDIR
from realm.runtime.spec.identity import DEFAULT_NAMESPACE, NAMESPACE_ENV, SECRET_ENV, namespace_secret
from realm.runtime.spec.model import MODEL_NAME_PATTERN, ModelSpec, ModelVersion, Resources, Toleration
from realm.runtime.spec.pipeline import PipelineSpec
from realm.runtime.spec.runtime_config import (
    ClusterConfig,
    ClusterModel,
    ConversationsConfig,
    EgressConfig,
    ModelConfig,
    PipelineEntry,
    RuntimeConfig,
    TenantEntry,
    VectorsConfig,
)
from realm.runtime.spec.status import API_VERSION
from realm.runtime.spec.tenant import TenantSpec, mcp_secret_env

Manifest = dict[str, Any]

PORT = 8000
# The runtime's ops listener (/metrics, /openapi.json): not in the HTTPRoute, scraped by Prometheus and
# the autoscaler only.
METRICS_PORT = 9090
# The runtime's internal listener, for calls from the other runtime pods of the namespace (the runtime
# config's cluster.internalPort): never in a Service or the HTTPRoute.
INTERNAL_PORT = 8081
# What the HTTPRoute forwards: the API, not the probes or anything else the public port may answer.
API_PATH_PREFIX = "/v1"
CONFIG_DIR = "/etc/realm"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
WEIGHTS_DIR = "/models"
RUN_AS = 10001
GPU_RESOURCE = "nvidia.com/gpu"
LABEL_MODEL = "realm.dev/model"
LABEL_VERSION = "realm.dev/model-version"
# Pods that serve a version carry `serves.realm.dev/<model>.<version>` (and `serves.realm.dev/<model>`)
# when they are a pool's: a pod of a pool serves several Models, and one label key per (model, version)
# lets each version's Service select exactly the pods that load it. The name part of a label key is at
# most 63 characters: a model name of at most 42, a dot and a version of at most 20 fit exactly (neither
# name holds a dot, so the split is unambiguous).
SERVES_PREFIX = "serves.realm.dev"
SERVES_VALUE = "true"
# Rolls the pods when the model section changes; tenant changes are hot-reloaded by the runtime.
ANNOTATION_MODEL_CONFIG = "realm.dev/model-config-sha256"
LABEL_TENANT = "realm.dev/tenant"
DEFAULT_SECRET_KEY = "apiKey"
# Every emptyDir has a size limit: past it the kubelet evicts the pod instead of letting one pod fill
# its node's disk. /tmp is the runtime's HOME: its KV disk tier (16 GiB by default), the compiled-module
# cache and the embedded conversation store live there. Fetched modules are a few MiB each.
TMP_SIZE_LIMIT = "20Gi"
MODULES_SIZE_LIMIT = "1Gi"
# Where the runtime pods keep tenants' pinned modules (an emptyDir) unless the operator is told otherwise:
# on by default, so that a Tenant's spec.wasm works with the chart's defaults.
DEFAULT_MODULES_DIR = "/var/lib/realm/modules"
IDENTITY_KEY = "identitySecret"  # the entry of a Model's identity Secret


@dataclass(frozen=True)
class ModelResource:
    """The parts of a Model object the builders use."""

    name: str
    namespace: str
    uid: str
    spec: ModelSpec
    # The autoscaler's replica counts per version, as the Model's status records them.
    autoscaled: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.match(MODEL_NAME_PATTERN, self.name):
            raise ValueError(f"model name {self.name!r} must match {MODEL_NAME_PATTERN}")


@dataclass(frozen=True)
class PublishedTenant:
    """A tenant as the operator publishes it: the spec, the sha256 of its API keys (never the keys), and
    its identity (namespace and uid), which its stored state is keyed by."""

    name: str
    spec: TenantSpec
    api_key_sha256: tuple[str, ...]
    namespace: str = DEFAULT_NAMESPACE
    uid: str | None = None


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway API Gateway (and optional listener) the model's HTTPRoute attaches to."""

    name: str
    namespace: str | None = None
    section_name: str | None = None


@dataclass(frozen=True)
class S3Options:
    """Where conversations and KV snapshots go: passed to the runtime pods as environment variables.

    The credentials never pass through the operator: the pods read them from a Secret (in the Model's
    namespace) by `secretKeyRef`, under the standard AWS variable names boto3 reads.
    """

    endpoint: str | None = None
    region: str | None = None
    bucket: str | None = None
    credentials_secret: str | None = None
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class BuildOptions:
    image: str
    image_pull_policy: str = "IfNotPresent"
    gateway: GatewayRef | None = None  # set: HTTPRoute with weights; unset: one stable Service
    hostnames: tuple[str, ...] = ()
    service_account: str | None = None
    modules_dir: str | None = None
    extra_labels: tuple[tuple[str, str], ...] = field(default=())
    # Cluster-wide runtime defaults (the chart's `runtime.*` values, via operator flags).
    # Image of pods that request a GPU (TensorRT-LLM, CUDA llama.cpp); `image` when unset.
    gpu_image: str | None = None
    gpu_resource: str = GPU_RESOURCE  # extended resource a GPU is requested as
    node_selector: tuple[tuple[str, str], ...] = ()  # merged under the Model's own (the Model wins)
    tolerations: tuple[Manifest, ...] = ()  # put before the Model's own
    runtime_class: str | None = None  # only for pods that request a GPU
    image_pull_secrets: tuple[str, ...] = ()
    s3: S3Options | None = None
    # The root of tenants' owner keys (operator/identity.py); pods get their namespace's secret only.
    installation_secret: str | None = field(default=None, repr=False)
    # What tenants' outbound calls may reach at all (the chart's egress.*), copied into every config.
    egress: EgressConfig = field(default_factory=EgressConfig)


# Names and metadata -------------------------------------------------------------------------------


def version_name(model: ModelResource, version: str) -> str:
    # At most 42 + 1 + 20 = 63 characters, a valid DNS-1035 label (the CRD enforces both lengths).
    return f"{model.name}-{version}"


def config_map_name(model: ModelResource, version: str) -> str:
    return f"{version_name(model, version)}-config"


def labels(model: ModelResource, version: str | None, opts: BuildOptions) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "realm-runtime",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "realm",
        "app.kubernetes.io/managed-by": "realm-operator",
        LABEL_MODEL: model.name,
    }
    if version is not None:
        out[LABEL_VERSION] = version
    out.update(dict(opts.extra_labels))
    return dict(sorted(out.items()))


def selector(model: ModelResource, version: str | None) -> dict[str, str]:
    # Only labels that never change for a pod: a Deployment's selector is immutable.
    sel = {LABEL_MODEL: model.name}
    if version is not None:
        sel[LABEL_VERSION] = version
    return sel


def serves_label(model: str, version: str | None = None) -> str:
    """The label key of pool pods that serve `model` (at `version` when given); see SERVES_PREFIX."""
    return f"{SERVES_PREFIX}/{model}" if version is None else f"{SERVES_PREFIX}/{model}.{version}"


def service_selector(model: ModelResource, version: str | None) -> dict[str, str]:
    """What a Model's Service selects: its own pods, or, for a Model in a pool, the pool's pods that
    serve it (all of its serving versions when `version` is None)."""
    if model.spec.pool is None:
        return selector(model, version)
    return {serves_label(model.name, version): SERVES_VALUE}


def owner_reference(model: ModelResource) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "Model",
        "name": model.name,
        "uid": model.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, model: ModelResource, version: str | None, opts: BuildOptions) -> Manifest:
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": labels(model, version, opts),
        "ownerReferences": [owner_reference(model)],
    }


def _version(model: ModelResource, version: str) -> ModelVersion:
    for v in model.spec.versions:
        if v.name == version:
            return v
    raise KeyError(f"model {model.name} has no version {version}")


# Runtime config -----------------------------------------------------------------------------------


def _weights(v: ModelVersion) -> tuple[str, Manifest | None, Manifest | None]:
    """The source as the runtime sees it, and the volume and mount it needs (pvc:// only)."""
    if not v.source.startswith("pvc://"):
        return v.source, None, None
    claim, _, rest = v.source.removeprefix("pvc://").partition("/")
    mount = f"{WEIGHTS_DIR}/{claim}"
    volume = {"name": "weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return f"{mount}/{rest}", volume, {"name": "weights", "mountPath": mount, "readOnly": True}


def model_config(model: ModelResource, version: str, gpus: int | None = None) -> ModelConfig:
    """One version as the runtime loads it. `gpus`: the GPUs of the pods it runs on (a pool's), when
    they are not the Model's own."""
    v = _version(model, version)
    rt = model.spec.runtime
    fields: dict[str, Any] = {
        # Clients ask for the Model's name; which version answers is the traffic split's business.
        "name": model.name,
        "engine": v.engine,
        "source": _weights(v)[0],
        "context_length": rt.context_length,
        "kv_cache_tokens": rt.kv_cache_tokens,
        "max_batch": rt.max_batch,
        "prefill_chunk": rt.prefill_chunk,
        "threads": rt.threads,
        "chat_template": v.chat_template,
        "engine_args": _engine_args(v, gpus=model.spec.resources.gpu if gpus is None else gpus),
        "version": version,
    }
    return ModelConfig(**fields)


def _engine_args(v: ModelVersion, *, gpus: int) -> dict[str, str | int | float | bool]:
    """The version's engineArgs as the runtime reads them, with the defaults that depend on the pod made
    explicit: a llamacpp version whose pods hold a GPU offloads every layer unless it says otherwise."""
    args = dict(v.engine_args)
    if v.engine == "llamacpp" and "nGpuLayers" not in args:
        args["nGpuLayers"] = -1 if gpus >= 1 else 0
    return dict(sorted(args.items()))


def pipeline_entry(name: str, spec: PipelineSpec) -> PipelineEntry:
    """A validated Pipeline as the runtime reads it: steps as declared, run order, output step resolved."""
    return PipelineEntry(
        name=name,
        tenant=spec.tenant,
        steps=list(spec.steps),
        order=spec.order(),
        output=spec.output_step(),
        timeout_seconds=spec.timeout_seconds,
    )


def pipelines_for(
    model: ModelResource, tenants: Iterable[str], pipelines: Iterable[PipelineEntry]
) -> list[PipelineEntry]:
    """The pipelines one Model's config lists: a step runs on the Model and the tenant is listed, by name."""
    names = set(tenants)
    return sorted(
        (p for p in pipelines if p.tenant in names and any(s.model_name == model.name for s in p.steps)),
        key=lambda p: p.name,
    )


def cluster_config(namespace: str, models: Iterable[tuple[str, ModelSpec]]) -> ClusterConfig:
    """Where every serving version of the namespace's Models runs (`models`: each Model's name and
    valid spec): its weight in the Model's traffic split and the Service `<model>-<version>` whose
    EndpointSlices list the pods that serve it, whether they are the version's own or a pool's. Sorted,
    so the ConfigMaps that carry it change only when a Model's placement or split does."""
    entries = [
        ClusterModel(name=name, version=t.version, weight=t.weight, service=f"{name}-{t.version}")
        for name, spec in models
        for t in spec.effective_traffic()
        if t.weight > 0
    ]
    return ClusterConfig(
        namespace=namespace,
        models=sorted(entries, key=lambda m: (m.name, m.version)),
        internal_port=INTERNAL_PORT,
    )


def tenant_entries(tenants: Iterable[PublishedTenant]) -> list[TenantEntry]:
    """Published tenants as the runtime config lists them, sorted by name."""
    return [
        TenantEntry(
            name=t.name,
            namespace=t.namespace,
            uid=t.uid,
            api_key_sha256=sorted(t.api_key_sha256),
            spec=t.spec,
        )
        for t in sorted(tenants, key=lambda t: t.name)
    ]


def serves_tenant(model: ModelResource, tenant: TenantSpec) -> bool:
    """Whether the Model's pods serve the tenant: it names the Model or one of its embedding models."""
    return bool({model.name, *(e.name for e in model.spec.embeddings)} & set(tenant.allowed_models))


def runtime_config(
    model: ModelResource,
    version: str,
    tenants: Iterable[PublishedTenant],
    modules_dir: str | None = None,
    pipelines: Iterable[PipelineEntry] = (),
    shared_store: bool = False,
    cluster: ClusterConfig | None = None,
    egress: EgressConfig | None = None,
) -> RuntimeConfig:
    """The document one version's pods read: that version as the only model, its allowed tenants, and
    the pipelines (already validated by the caller) that use the model and run as one of those tenants.
    With `shared_store` (an S3 bucket configured) conversations live in S3, so every replica of every
    version serves every conversation; the bucket and credentials reach the pods as environment.
    `cluster`: where the namespace's other models run (`cluster_config`)."""
    allowed = sorted((t for t in tenants if serves_tenant(model, t.spec)), key=lambda t: t.name)
    return RuntimeConfig(
        models=[model_config(model, version)],
        embeddings=list(model.spec.embeddings),
        tenants=tenant_entries(allowed),
        pipelines=pipelines_for(model, (t.name for t in allowed), pipelines),
        modules_dir=modules_dir,
        conversations=ConversationsConfig(backend="s3") if shared_store else ConversationsConfig(),
        vectors=VectorsConfig(backend="s3") if shared_store else VectorsConfig(),
        cluster=cluster,
        egress=egress if egress is not None else EgressConfig(),
    )


# libyaml's emitter writes the same text 4x faster than PyYAML's: every Model pass renders its config.
_YAML_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_YAML_DUMPER, sort_keys=True, default_flow_style=False)


# Each tenant's entry as YAML text, by its canonical JSON: a burst of new Tenants republishes a Model's
# config many times over, each time with the same entries plus a few new ones, and PyYAML's representer
# (Python even under libyaml) was a tenth of the operator's CPU in a 1,000-Tenant burst. A bounded
# memo of a pure function: the output is still a function of the input alone.
_EMPTY_TENANTS = re.compile(r"^tenants: \[\]\n", re.MULTILINE)


@functools.lru_cache(maxsize=8192)
def _entry_text(canonical: str) -> str:
    # A one-item list: the same text the item has inside the document, whose top-level sequences
    # PyYAML writes at column 0 ("tenants:" then "- name: ...").
    return _yaml([json.loads(canonical)])


def _entry(item: Any) -> str:
    return _entry_text(json.dumps(item, sort_keys=True, separators=(",", ":")))


def _dump(config: RuntimeConfig) -> str:
    """The config as YAML: `yaml.dump` of the whole document, byte for byte (a test holds it to that),
    with the tenants' entries taken from `_entry_text`'s memo."""
    doc = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    items = doc.get("tenants")
    if not items:
        return _yaml(doc)
    text = _yaml(doc | {"tenants": []})
    entries = "".join(_entry(item) for item in items)
    return _EMPTY_TENANTS.sub(lambda _: "tenants:\n" + entries, text, count=1)


def model_config_digest(config: RuntimeConfig) -> str:
    models = [m.model_dump(mode="json", by_alias=True) for m in config.models]
    return hashlib.sha256(json.dumps(models, sort_keys=True).encode()).hexdigest()


def shared_store_bucket(s3: S3Options | None) -> str | None:
    """The platform's bucket, where conversations and collections are shared by every pod; None: each
    pod keeps them on its own disk."""
    return s3.bucket if s3 is not None and s3.bucket else None


def shared_store(opts: BuildOptions) -> bool:
    return shared_store_bucket(opts.s3) is not None


def config_map(
    model: ModelResource,
    version: str,
    tenants: Iterable[PublishedTenant],
    opts: BuildOptions,
    pipelines: Iterable[PipelineEntry] = (),
    cluster: ClusterConfig | None = None,
) -> Manifest:
    config = runtime_config(
        model,
        version,
        tenants,
        opts.modules_dir,
        pipelines,
        shared_store=shared_store(opts),
        cluster=cluster,
        egress=opts.egress,
    )
    return config_map_of(_metadata(config_map_name(model, version), model, version, opts), config)


def config_map_of(metadata: Manifest, config: RuntimeConfig) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_KEY: _dump(config)},
    }


# Workloads ----------------------------------------------------------------------------------------


def replicas_for(model: ModelResource, version: str) -> int | None:
    """Replicas to write into the Deployment: the spec's, or the autoscaler's within its bounds."""
    if version not in model.spec.serving_versions():
        return 0  # kept (cheap to bring back), but no GPU held
    scaling = model.spec.autoscaling
    if scaling is not None:
        chosen = model.autoscaled.get(version, scaling.min_replicas)
        return int(max(scaling.min_replicas, min(scaling.max_replicas, chosen)))
    return model.spec.replicas if model.spec.replicas is not None else 1


def _resources(r: Resources, gpu_resource: str = GPU_RESOURCE) -> Manifest:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu is not None:
        requests["cpu"] = r.cpu
    if r.memory is not None:
        requests["memory"] = limits["memory"] = r.memory
    if r.gpu > 0:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[gpu_resource] = limits[gpu_resource] = str(r.gpu)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def s3_env(s3: S3Options | None) -> list[Manifest]:
    """The runtime's S3 settings as container env (empty settings are left out, not set to "")."""
    if s3 is None:
        return []
    env: list[Manifest] = [
        {"name": name, "value": value}
        for name, value in (
            ("REALM_S3_ENDPOINT", s3.endpoint),
            ("REALM_S3_REGION", s3.region),
            ("REALM_S3_BUCKET", s3.bucket),
        )
        if value
    ]
    if s3.credentials_secret:
        for name, key in (
            ("AWS_ACCESS_KEY_ID", s3.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key_key),
        ):
            ref = {"name": s3.credentials_secret, "key": key}
            env.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
    return env


def mcp_env(tenants: Iterable[TenantEntry]) -> list[Manifest]:
    """Each MCP server's Authorization value, from the Secret its spec names, as container env: the
    value never passes through the operator or a ConfigMap. Optional, so one tenant's missing Secret
    never keeps the pods from starting (the runtime refuses that server's calls, naming the Secret)."""
    env: list[Manifest] = []
    for t in sorted(tenants, key=lambda t: t.name):
        for server in t.spec.egress.mcp_servers:
            ref = server.headers_secret_ref
            if ref is not None:
                source = {"name": ref.name, "key": ref.key, "optional": True}
                name = mcp_secret_env(t.name, server.name)
                env.append({"name": name, "valueFrom": {"secretKeyRef": source}})
    return env


def identity_secret_name(model: ModelResource) -> str:
    return f"{model.name}-identity"


def identity_secret(model: ModelResource, opts: BuildOptions) -> Manifest | None:
    """The Model's pods' identity secret (its namespace's, derived from the installation secret: a pod
    of one namespace cannot derive another's owner keys), owned by the Model; None without an
    installation secret. Created once by the operator (operator/identity.py), never rewritten."""
    if not opts.installation_secret:
        return None
    value = namespace_secret(opts.installation_secret, model.namespace)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": identity_secret_name(model),
            "namespace": model.namespace,
            "labels": {"app.kubernetes.io/managed-by": "realm-operator", LABEL_MODEL: model.name},
            "ownerReferences": [owner_reference(model)],
        },
        "data": {IDENTITY_KEY: base64.b64encode(value.encode()).decode()},
    }


def identity_env(model: ModelResource, opts: BuildOptions) -> list[Manifest]:
    """The namespace's identity secret as the runtime reads it (from the Secret, never the config)."""
    return identity_env_from(identity_secret_name(model), model.namespace, opts)


def identity_env_from(secret: str, namespace: str, opts: BuildOptions) -> list[Manifest]:
    if not opts.installation_secret:
        return []
    ref = {"name": secret, "key": IDENTITY_KEY}
    return [
        {"name": NAMESPACE_ENV, "value": namespace},
        {"name": SECRET_ENV, "valueFrom": {"secretKeyRef": ref}},
    ]


def node_selector(own: Mapping[str, str], opts: BuildOptions) -> dict[str, str]:
    """The operator's default node selector with the resource's own on top (same key: its own wins)."""
    merged = dict(opts.node_selector)
    merged.update(own or {})
    return dict(sorted(merged.items()))


def tolerations(own: Sequence[Toleration], opts: BuildOptions) -> list[Manifest]:
    """The operator's default tolerations, then the resource's own that are not already among them."""
    out: list[Manifest] = [dict(t) for t in opts.tolerations]
    for t in own or []:
        item = t.model_dump(by_alias=True, exclude_none=True)
        if item not in out:
            out.append(item)
    return out


def configmap_modules(tenants: Iterable[TenantEntry]) -> list[Manifest]:
    """Projected-volume sources that put each tenant's ConfigMap-held module at `<sha256>.wasm`.

    Optional, so one tenant's missing ConfigMap never keeps a Model's pods from starting (the runtime
    counts and logs the module it cannot find). One entry per digest: a projected volume refuses two
    sources writing the same path, and equal digests are the same bytes anyway."""
    sources: list[Manifest] = []
    seen: set[str] = set()
    for t in sorted(tenants, key=lambda t: t.name):
        wasm = t.spec.wasm
        if wasm is None or wasm.config_map is None or wasm.sha256 in seen:
            continue
        seen.add(wasm.sha256)
        item = {"key": CONFIGMAP_KEY, "path": f"{wasm.sha256}.wasm"}
        sources.append({"configMap": {"name": wasm.config_map, "optional": True, "items": [item]}})
    return sources


@dataclass(frozen=True)
class PodPlan:
    """What differs between the pods of a Model's version and those of a pool: everything else about a
    runtime Deployment is the same for both (`runtime_deployment`)."""

    metadata: Manifest  # the Deployment's
    selector: Mapping[str, str]
    pod_labels: Mapping[str, str]
    config_map: str
    config: RuntimeConfig
    weights: tuple[tuple[Manifest, Manifest], ...]  # (volume, mount) per claim
    resources: Resources
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    wants_gpu: bool
    identity_env: tuple[Manifest, ...]
    replicas: int | None


def deployment(
    model: ModelResource, version: str, tenants: Iterable[PublishedTenant], opts: BuildOptions
) -> Manifest:
    spec = model.spec
    v = _version(model, version)
    _, weights_volume, weights_mount = _weights(v)
    weights = ((weights_volume, weights_mount),) if weights_volume and weights_mount else ()
    return runtime_deployment(
        PodPlan(
            metadata=_metadata(version_name(model, version), model, version, opts),
            selector=selector(model, version),
            pod_labels=labels(model, version, opts),
            config_map=config_map_name(model, version),
            config=runtime_config(model, version, tenants, opts.modules_dir, egress=opts.egress),
            weights=weights,
            resources=spec.resources,
            node_selector=spec.node_selector,
            tolerations=tuple(spec.tolerations),
            # The GPU image carries TensorRT-LLM and a CUDA build of llama.cpp; a CPU image would leave a
            # GPU idle.
            wants_gpu=v.engine == "trtllm" or spec.resources.gpu >= 1,
            identity_env=tuple(identity_env(model, opts)),
            replicas=replicas_for(model, version),
        ),
        opts,
    )


def runtime_deployment(plan: PodPlan, opts: BuildOptions) -> Manifest:
    """A Deployment of runtime pods that read `plan.config` from the ConfigMap `plan.config_map`."""
    config = plan.config
    # The whole folder is mounted (no subPath) so ConfigMap updates reach the pod and the runtime
    # reloads tenants without a restart.
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": plan.config_map}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]
    for volume, mount in plan.weights:
        mounts.append(mount)
        volumes.append(volume)
    if opts.modules_dir is not None:
        mounts.append({"name": "modules", "mountPath": opts.modules_dir})
        volumes.append({"name": "modules", "emptyDir": {"sizeLimit": MODULES_SIZE_LIMIT}})
        sources = configmap_modules(config.tenants)
        if sources:
            mounts.append(
                {
                    "name": "configmap-modules",
                    "mountPath": f"{opts.modules_dir.rstrip('/')}/{CONFIGMAP_SUBDIR}",
                    "readOnly": True,
                }
            )
            volumes.append({"name": "configmap-modules", "projected": {"sources": sources}})

    image = opts.gpu_image if plan.wants_gpu and opts.gpu_image else opts.image
    container: Manifest = {
        "name": "runtime",
        "image": image,
        "imagePullPolicy": opts.image_pull_policy,
        "command": [
            "realm",
            "serve",
            "--config",
            CONFIG_PATH,
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--metrics-port",
            str(METRICS_PORT),
        ],
        # HOME: the root filesystem is read-only.
        "env": [
            {"name": "HOME", "value": "/tmp"},
            *s3_env(opts.s3),
            *plan.identity_env,
            *mcp_env(config.tenants),
        ],
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
        ],
        # /healthz answers as soon as the server is up; /readyz only once the model is loaded, so a
        # slow load delays traffic without the liveness probe killing the pod.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": _resources(plan.resources, opts.gpu_resource),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The runtime drains in-flight generations on SIGTERM.
        "terminationGracePeriodSeconds": 60,
        "enableServiceLinks": False,
        # The runtime reads which pods serve the models it does not load from its namespace's
        # EndpointSlices (the config's `cluster`): a token only with the runtime's own account, which the
        # chart allows exactly that; the namespace's default account gets none.
        "automountServiceAccountToken": opts.service_account is not None,
    }
    selected = node_selector(plan.node_selector, opts)
    if selected:
        pod_spec["nodeSelector"] = selected
    tolerated = tolerations(plan.tolerations, opts)
    if tolerated:
        pod_spec["tolerations"] = tolerated
    if opts.service_account is not None:
        pod_spec["serviceAccountName"] = opts.service_account
    if opts.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in opts.image_pull_secrets]
    # The GPU container runtime (e.g. RuntimeClass `nvidia`) only where a GPU is requested: its
    # scheduling constraints would otherwise pull CPU-only pods onto GPU nodes.
    if opts.runtime_class is not None and plan.resources.gpu > 0:
        pod_spec["runtimeClassName"] = opts.runtime_class

    # GPUs are scarce: surging would need a spare one, so GPU pods replace one at a time instead.
    rolling = (
        {"maxSurge": 0, "maxUnavailable": 1}
        if plan.resources.gpu > 0
        else {"maxSurge": 1, "maxUnavailable": 0}
    )
    dep_spec: Manifest = {
        "selector": {"matchLabels": dict(plan.selector)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": dict(plan.pod_labels),
                "annotations": {ANNOTATION_MODEL_CONFIG: model_config_digest(config)},
            },
            "spec": pod_spec,
        },
    }
    if plan.replicas is not None:
        dep_spec["replicas"] = plan.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": plan.metadata, "spec": dep_spec}


def _service(
    name: str, model: ModelResource, version: str | None, opts: BuildOptions, *, metrics: bool = False
) -> Manifest:
    ports: list[Manifest] = [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]
    if metrics:
        ports.append({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, model, version, opts),
        "spec": {"type": "ClusterIP", "selector": service_selector(model, version), "ports": ports},
    }


def version_service(model: ModelResource, version: str, opts: BuildOptions) -> Manifest:
    """A version's pods (a pool's that serve it, for a Model in a pool); its `metrics` port is what the
    chart's ServiceMonitor scrapes. A pool's pods serve several versions: their pool's Service carries
    the port instead, so that each pod is scraped once."""
    return _service(version_name(model, version), model, version, opts, metrics=model.spec.pool is None)


def stable_service(model: ModelResource, opts: BuildOptions) -> Manifest:
    """One Service over every version's pods, for clusters without Gateway API."""
    return _service(model.name, model, None, opts)


def http_route(model: ModelResource, gateway: GatewayRef, opts: BuildOptions) -> Manifest:
    """The weighted split as a Gateway API HTTPRoute over the per-version Services."""
    parent: Manifest = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace is not None:
        parent["namespace"] = gateway.namespace
    if gateway.section_name is not None:
        parent["sectionName"] = gateway.section_name
    backends = [
        {"name": version_name(model, t.version), "port": PORT, "weight": t.weight}
        for t in model.spec.effective_traffic()
        if t.weight > 0
    ]
    spec: Manifest = {
        "parentRefs": [parent],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": API_PATH_PREFIX}}], "backendRefs": backends}
        ],
    }
    if opts.hostnames:
        spec["hostnames"] = list(opts.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(model.name, model, None, opts),
        "spec": spec,
    }


def build_all(
    model: ModelResource,
    tenants: Sequence[PublishedTenant],
    opts: BuildOptions,
    pipelines: Sequence[PipelineEntry] = (),
    cluster: ClusterConfig | None = None,
) -> list[Manifest]:
    """Everything the Model owns, in a fixed order (per version: ConfigMap, Deployment, Service). A
    Model in a pool owns its Services (and HTTPRoute) only: its pool's pass runs the pods."""
    out: list[Manifest] = []
    for v in model.spec.versions:
        if model.spec.pool is None:
            out.append(config_map(model, v.name, tenants, opts, pipelines, cluster))
            out.append(deployment(model, v.name, tenants, opts))
        out.append(version_service(model, v.name, opts))
    if opts.gateway is not None:
        out.append(http_route(model, opts.gateway, opts))
    else:
        out.append(stable_service(model, opts))
    return out


# Tenant API keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str
    managed: bool  # created and owned by the operator (vs. supplied by the user)


def api_key_secret_ref(tenant: str, spec: TenantSpec | None) -> SecretRef:
    if spec is not None and spec.api_key_secret_ref is not None:
        return SecretRef(spec.api_key_secret_ref.name, spec.api_key_secret_ref.key, managed=False)
    return SecretRef(f"{tenant}-api-key", DEFAULT_SECRET_KEY, managed=True)


def api_key_secret(tenant: str, namespace: str, tenant_uid: str, ref: SecretRef, api_key: str) -> Manifest:
    """The Secret the operator creates for a tenant without one, owned by the Tenant for garbage collection.

    The caller draws `api_key` (keeping this function pure) and creates the Secret only when absent: an
    existing key is never rotated by a reconcile.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": ref.name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "realm-operator", LABEL_TENANT: tenant},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Tenant",
                    "name": tenant,
                    "uid": tenant_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {ref.key: base64.b64encode(api_key.encode()).decode()},
    }
