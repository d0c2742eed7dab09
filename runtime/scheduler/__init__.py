"""Engine-agnostic admission control: rate quotas, per-tenant queues, weighted fair sharing of batch slots
and of WebAssembly invocation slots."""

from .admission import AdmissionScheduler
from .errors import AdmissionClosed, QueueFull, QuotaExceeded
from .invocations import InvocationAdmission, InvocationsBusy, InvocationSlot
from .policy import TenantPolicy
from .ticket import Ticket

__all__ = [
    "AdmissionClosed",
    "AdmissionScheduler",
    "InvocationAdmission",
    "InvocationSlot",
    "InvocationsBusy",
    "QueueFull",
    "QuotaExceeded",
    "TenantPolicy",
    "Ticket",
]
