"""Engine-agnostic admission control: rate quotas, per-tenant queues, weighted fair sharing of batch slots."""

from .admission import AdmissionScheduler
from .errors import AdmissionClosed, QueueFull, QuotaExceeded
from .policy import TenantPolicy
from .ticket import Ticket

__all__ = ["AdmissionClosed", "AdmissionScheduler", "QueueFull", "QuotaExceeded", "TenantPolicy", "Ticket"]
