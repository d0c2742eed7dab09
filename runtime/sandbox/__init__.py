"""Tenant WebAssembly sandboxes: the host ABI (abi.py, wit/), its bindings and the runner."""

from .modules import InvocationFailed, TenantModule
from .runner import InvocationResult, Sandbox, SandboxLimits

__all__ = ["InvocationFailed", "InvocationResult", "Sandbox", "SandboxLimits", "TenantModule"]
