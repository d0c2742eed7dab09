"""What the scheduler needs to know about one tenant, decoupled from the CRD's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realm.runtime.spec.tenant import TenantSpec


@dataclass(frozen=True)
class TenantPolicy:
    """Scheduling weight and limits of one tenant. `None` means unlimited."""

    weight: int = 1
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    max_queued_requests: int = 64
    # WebAssembly: invocations running and waiting at once, and module deploys (each may compile).
    # Never unlimited: a tenant's sleeping guests would otherwise hold every sandbox thread.
    max_concurrent_invocations: int = 4
    max_queued_invocations: int = 16
    module_deploys_per_minute: int = 30

    def __post_init__(self) -> None:
        # Validated here as well as in the CRD because tests and embedders build policies by hand,
        # and a zero weight or rate would divide by zero deep inside the scheduler.
        if self.weight < 1:
            raise ValueError("weight must be >= 1")
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        for name in ("max_concurrent_invocations", "module_deploys_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_queued_requests", "max_queued_invocations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def from_spec(cls, spec: TenantSpec) -> TenantPolicy:
        quotas = spec.quotas
        return cls(
            weight=spec.weight,
            requests_per_minute=quotas.requests_per_minute,
            tokens_per_minute=quotas.tokens_per_minute,
            max_concurrent_requests=quotas.max_concurrent_requests,
            max_queued_requests=quotas.max_queued_requests,
            max_concurrent_invocations=quotas.max_concurrent_invocations,
            max_queued_invocations=quotas.max_queued_invocations,
            module_deploys_per_minute=quotas.module_deploys_per_minute,
        )
