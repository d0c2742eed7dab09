"""The operator's state: one object, built by main.py and handed to kopf's handlers through `memo`
(kopf passes it to every handler), to the light watches (fastpath.py) and to the queues' passes.

Nothing in the operator's modules changes at run time: what does (the client, kopf's indexes, the work
queues, the peering gate, what the Tenant passes remember between watch events, caches) lives here.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from realm.operator.kube import Kube
from realm.operator.options import GatewayApi, OperatorConfig
from realm.operator.passes import PassQueue
from realm.operator.peering_gate import Gate
from realm.operator.traffic import TrafficMeter
from realm.operator.workqueue import WorkQueue
from realm.operator.world import Indexes, ModelRecord, SpecCache, records_in

TenantKey = tuple[str, str]  # (namespace, name)
MEMO_KEY = "operator"  # where kopf's memo holds the Operator


@dataclass
class TenantMemory:
    """What the Tenant passes know between watch events (all written from kopf's loop, the light watches'
    thread and the Tenant queue's workers; single dict operations, atomic under the GIL)."""

    # The newest body of each Tenant seen on kopf's watch: a pass works from it instead of reading it.
    latest: dict[TenantKey, Mapping[str, Any]] = field(default_factory=dict)
    # Bodies of new Tenants a light watch saw before kopf's watch did: their urgent step (the key) runs
    # from these. kopf's first event for the Tenant ends the entry.
    early: dict[TenantKey, Mapping[str, Any]] = field(default_factory=dict)
    # Secrets an urgent step created, reported by the Tenant's next full pass (one event per Tenant).
    created: dict[TenantKey, list[str]] = field(default_factory=dict)
    # Secrets this operator created whose watch event has not reached the index yet (read-your-writes:
    # the Tenant's next pass would otherwise create it again and be refused). The Secret's first event
    # ends the entry (tenants.secret_changed): from then on the index knows better.
    fresh_secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


class Operator:
    """The one state object. `tenant_pass`, `model_pass` and `pool_pass` are the work of the three queues
    (tenants.py, models.py and pools.py; handlers.new_operator wires them), taking this object first."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        tenant_pass: Callable[[Operator, TenantKey, bool], None],
        model_pass: Callable[[Operator, str, str], object],
        pool_pass: Callable[[Operator, str, str], object] | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.gateway_api = GatewayApi(kube, config.gateway_check_seconds)
        # kopf's indexes, from the startup handler on (handlers.capture_indexes); before that, or outside
        # a running operator, empty or a listing (world.listed).
        self.indexes = Indexes.empty()
        # Whether kopf has called a handler: its initial listings are indexed then (kopf indexes first),
        # which the light watches wait for.
        self.indexed = False
        self.specs = SpecCache()
        self.memory = TenantMemory()
        # The Models' request counters sampled across ticks: status.traffic as measured (traffic.py).
        self.traffic = TrafficMeter()
        # Whether this replica may act on the light watches' events (kopf's peering, read by
        # peering_gate.py); None: no light watches run (tests, tools, namespace patterns).
        self.gate: Gate | None = None
        # A Model pass's requests that do not depend on each other go out at once: in a burst each round
        # trip to a busy apiserver takes 0.1-0.3 s, and a new Model's Deployment came after seven of them
        # in a row.
        self.io = ThreadPoolExecutor(max_workers=128, thread_name_prefix="kube-io")
        # Sixteen threads: a pass mostly waits on the apiserver, and a burst of Tenants wants many in
        # flight. While new Tenants keep arriving (an urgent request within the last second) their
        # statuses and events wait, 15 s at most: the apiserver takes the keys first (see workqueue.py).
        self.tenants: WorkQueue[TenantKey] = WorkQueue(
            lambda key, urgent: tenant_pass(self, key, urgent),
            workers=16,
            quiet=1.0,
            max_hold=15.0,
            name="tenant",
        )
        # The one way to run a Model pass (one pass per Model at a time, hence no lock of its own).
        # Model passes wait for the keys likewise: a pass before the keys exist publishes a config that
        # lacks them and is redone right after. 32 workers: a new Model's pass holds its worker while the
        # apiserver allocates its Services' cluster IPs (1-3 s each in a burst), and with 16 the last of
        # 20 new Models waited for a free worker (Model -> Deployment p99 3.3-3.5 s against 1.2-1.8 s
        # with 32, same noisy hour).
        self.passes = PassQueue(
            lambda namespace, model: model_pass(self, namespace, model),
            workers=32,
            defer=self.tenants.urgent_active,
        )
        # The one way to run a ModelPool pass, likewise one per pool at a time. Pools are few: a few
        # workers do.
        self.pool_passes = PassQueue(
            lambda namespace, pool: pool_pass(self, namespace, pool) if pool_pass is not None else None,
            workers=4,
            defer=self.tenants.urgent_active,
            kind="ModelPool",
        )

    def request_model(self, namespace: str, model: str) -> None:
        """Request the pass that publishes a Model's runtime config: its own, and its pool's when it is
        in one (the pool's ConfigMap lists its tenants and pipelines)."""
        self.passes.request(namespace, model)
        records: list[ModelRecord] = records_in(self.indexes.models, namespace)
        pool = next((m.pool for m in records if m.name == model and not m.deleting), None)
        if pool is not None:
            self.pool_passes.request(namespace, pool)

    def kopf_called(self) -> None:
        """kopf called a handler: its indexes are populated (kopf indexes before it handles), and the
        handler's context lets the queues' passes post events (kopf keeps its event queue in context
        variables)."""
        if self.indexed:
            return
        self.tenants.context = self.passes.context = self.pool_passes.context = contextvars.copy_context()
        self.indexed = True

    def may_act_early(self) -> bool:
        """Whether a light watch's event may be acted on: kopf's indexes are populated (the urgent steps
        read them) and kopf's peering lets this replica act."""
        return self.gate is not None and self.indexed and self.gate.open()


def operator_of(memo: Mapping[str, Any]) -> Operator:
    """The Operator in kopf's memo (a per-object shallow copy of main.py's: the same Operator)."""
    op = memo[MEMO_KEY]
    assert isinstance(op, Operator)
    return op
