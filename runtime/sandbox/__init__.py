"""Tenant WebAssembly sandboxes: the host ABI (abi.py, wit/), its bindings and the runner.

The sandbox knows the ABI and nothing of HTTP, the serving layer or the CRDs: the runtime behind
the host functions is a `HostServices` it defines (context.py) and serving implements; limits
come as its own `SandboxLimits`; what the services refuse it maps to ABI codes itself.
"""

from .modules import InvocationAbandoned, InvocationFailed, TenantModule
from .runner import InvocationResult, Sandbox, SandboxLimits

__all__ = [
    "InvocationAbandoned",
    "InvocationFailed",
    "InvocationResult",
    "Sandbox",
    "SandboxLimits",
    "TenantModule",
]
