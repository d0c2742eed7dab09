"""Prometheus metrics of one runtime. Each app owns its registry, so tests can build several apps.

Engine-side numbers (running sequences, KV use) and queue depths are read at scrape time by a
custom collector rather than mirrored into gauges, so they can never drift from the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from realm.runtime.engines.base import Engine

# `*_created` series double every counter's cardinality and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class QueueDepth(Protocol):
    def queue_depth(self, tenant: str | None = None, model: str | None = None) -> int: ...


class _LiveCollector(Collector):
    def __init__(
        self,
        engines: Callable[[], Mapping[str, Engine]],
        queues: Callable[[], tuple[QueueDepth | None, Iterable[tuple[str, str]]]],
    ) -> None:
        self._engines = engines
        self._queues = queues

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily(
            "realm_running_requests", "Sequences the engine is advancing.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "realm_engine_waiting_requests",
            "Sequences submitted to the engine but not yet holding a slot.",
            labels=["model"],
        )
        batch = GaugeMetricFamily(
            "realm_batch_size", "Sequences decoded together in the current step.", labels=["model"]
        )
        max_batch = GaugeMetricFamily(
            "realm_max_batch_size", "Sequences the engine can decode together.", labels=["model"]
        )
        kv_used = GaugeMetricFamily("realm_kv_cache_used_tokens", "KV cache cells in use.", labels=["model"])
        kv_ratio = GaugeMetricFamily(
            "realm_kv_cache_usage_ratio", "Fraction of the KV cache in use.", labels=["model"]
        )
        for name, engine in sorted(self._engines().items()):
            stats = engine.stats()
            running.add_metric([name], stats.running)
            waiting.add_metric([name], stats.waiting)
            batch.add_metric([name], stats.running)
            max_batch.add_metric([name], engine.info.max_batch)
            kv_used.add_metric([name], stats.kv_used_tokens)
            kv_ratio.add_metric(
                [name], stats.kv_used_tokens / stats.kv_capacity_tokens if stats.kv_capacity_tokens else 0.0
            )
        yield from (running, waiting, batch, max_batch, kv_used, kv_ratio)

        queued = GaugeMetricFamily(
            "realm_queued_requests", "Requests waiting for admission.", labels=["tenant", "model"]
        )
        scheduler, pairs = self._queues()
        if scheduler is not None:
            for tenant, model in pairs:
                queued.add_metric([tenant, model], scheduler.queue_depth(tenant=tenant, model=model))
        yield queued


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "realm_requests",
            "API requests by outcome.",
            ["tenant", "model", "endpoint", "outcome"],
            registry=r,
        )
        # What the operator reads to report a Model's split as measured (status.traffic): each request
        # counted once, by the pod that chose its version, wherever it is then served.
        self.model_requests = Counter(
            "realm_model_requests",
            "Generating requests routed to a model version (named or picked by weight).",
            ["model", "version"],
            registry=r,
        )
        self.egress_requests = Counter(
            "realm_egress_requests",
            "Outbound calls of tenants' modules (http-fetch, MCP) by outcome.",
            ["tenant", "outcome"],
            registry=r,
        )
        self.egress_check = Histogram(
            "realm_egress_check_seconds",
            "Time to check an outbound call's URL: allowlist, resolution and address policy.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0),
            registry=r,
        )
        self.embedded_inputs = Counter(
            "realm_embedded_inputs",
            "Texts embedded (/v1/embeddings and the ABI's embed); their tokens count in realm_prompt_tokens.",
            ["tenant", "model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "realm_prompt_tokens", "Prompt tokens processed.", ["tenant", "model"], registry=r
        )
        self.completion_tokens = Counter(
            "realm_completion_tokens", "Completion tokens generated.", ["tenant", "model"], registry=r
        )
        self.ttft = Histogram(
            "realm_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "realm_inter_token_latency_seconds",
            "Between consecutive tokens of one sequence.",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "realm_queue_wait_seconds",
            "Time a request waited for admission.",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Pipeline runs (serving/pipelines.py) by phase, and each step's outcome and wall time.
        self.pipeline_runs = Counter(
            "realm_pipeline_runs",
            "Pipeline runs by final phase.",
            ["tenant", "pipeline", "phase"],
            registry=r,
        )
        self.pipeline_steps = Histogram(
            "realm_pipeline_step_seconds",
            "Pipeline step wall time (from its start to its end) by phase.",
            ["tenant", "pipeline", "step", "phase"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "realm_quota_rejections", "Requests refused with 429.", ["tenant", "model", "reason"], registry=r
        )
        # KV snapshots: lookups, hits per tier, misses, loads refused (reason: corrupt, truncated,
        # mismatch, s3_error, timeout: each one a recompute, never a wrong answer), uploads, evictions.
        self.kv_snapshot_events = Counter(
            "realm_kv_snapshot_events", "KV snapshot store events.", ["event", "reason"], registry=r
        )
        # Cross-pod calls this pod made (serving/remote.py), by the model they named and how they ended;
        # the pod that serves one counts it under the endpoint `internal` of realm_requests.
        self.remote_calls = Counter(
            "realm_remote_calls",
            "Generations sent to another pod, by outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.remote_retries = Counter(
            "realm_remote_retries",
            "Cross-pod calls moved to another pod after one failed before any text.",
            ["model"],
            registry=r,
        )
        self.remote_overhead = Histogram(
            "realm_remote_overhead_seconds",
            "What a cross-pod call added to its generation: the caller's wall time on it minus the serving "
            "pod's own time (picking, the credential, HTTP both ways, the serving pod's listener).",
            ["model"],
            buckets=(
                0.0005,
                0.001,
                0.0015,
                0.002,
                0.0025,
                0.003,
                0.004,
                0.005,
                0.0075,
                0.01,
                0.025,
                0.05,
                0.1,
            ),
            registry=r,
        )
        self.config_reloads = Counter(
            "realm_config_reloads", "Config file reloads by outcome.", ["outcome"], registry=r
        )
        # Tenant WebAssembly invocations.
        self.wasm_invocations = Counter(
            "realm_wasm_invocations",
            "Tenant module invocations by outcome.",
            ["tenant", "outcome"],
            registry=r,
        )
        self.wasm_wall = Histogram(
            "realm_wasm_invocation_seconds",
            "Wall time of an invocation, host calls included.",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wasm_fuel = Counter(
            "realm_wasm_fuel_consumed", "WebAssembly fuel burned by invocations.", ["tenant"], registry=r
        )
        self.wasm_memory_peak = Histogram(
            "realm_wasm_memory_peak_bytes",
            "Linear memory size at the end of an invocation.",
            ["tenant"],
            buckets=(64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30),
            registry=r,
        )
        self.wasm_host_calls = Counter(
            "realm_wasm_host_calls", "Host calls made by tenant modules.", ["tenant", "function"], registry=r
        )
        self.wasm_deploys = Counter(
            "realm_wasm_deploys", "Modules deployed (hot swaps).", ["tenant"], registry=r
        )
        # Tenant samplers (ABI 1.2): one observation per engine step a module's sampler answers.
        self.sampler_step = Histogram(
            "realm_sampler_step_seconds",
            "Time a tenant module's sampler took for one engine step, queueing on its thread included.",
            ["model"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.sampler_failures = Counter(
            "realm_sampler_failures",
            "Engine steps a tenant module's sampler failed (sampler_timeout, sampler_trap, sampler_invalid).",
            ["tenant", "code"],
            registry=r,
        )
        self.wasm_deploy_failures = Counter(
            "realm_wasm_deploy_failures",
            "Pinned modules not deployed: not found, not fetched, digest mismatch or rejected.",
            ["tenant"],
            registry=r,
        )

    def watch(
        self,
        engines: Callable[[], Mapping[str, Engine]],
        queues: Callable[[], tuple[QueueDepth | None, Iterable[tuple[str, str]]]],
    ) -> None:
        self.registry.register(_LiveCollector(engines, queues))

    def render(self) -> bytes:
        return generate_latest(self.registry)
