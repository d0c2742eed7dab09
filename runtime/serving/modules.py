"""Deploying tenants' WebAssembly modules: one uploaded, or each tenant's pinned module from its
source (module_sources.py) on every config (re)load.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from realm.runtime.sandbox.runner import InvocationFailed, TenantModule
from realm.runtime.scheduler import QuotaExceeded as RateQuotaExceeded

from . import module_sources
from .errors import ModulePinned, QuotaExceeded
from .invocations import running_sandbox
from .state import ServingState

log = logging.getLogger(__name__)


async def deploy_module(state: ServingState, tenant: str, wasm: bytes) -> TenantModule:
    """Make `wasm` the tenant's module (invocations in flight finish on the one they started with).
    Raises ModulePinned when the tenant's spec pins its module (unless the runtime allows uploads over
    pins), QuotaExceeded past the tenant's moduleDeploysPerMinute, InvocationFailed for a module the
    sandbox rejects."""
    sandbox = running_sandbox(state)
    entry = state.tenants.get(tenant)
    pin = entry.spec.wasm if entry is not None else None
    if pin is not None and not state.module_upload_over_pin:
        raise ModulePinned(
            f"Tenant {tenant}'s module is pinned by its spec.wasm (sha256 {pin.sha256}): change the "
            "Tenant's spec.wasm to run another module; uploads over a pinned module are off on this "
            "runtime (moduleUploadOverPin).",
            code="module_pinned",
        )
    if state.invocations is not None:
        try:
            # Every upload counts, compiled before or not, so that the quota tells a tenant nothing
            # about which modules other tenants deployed (the compile cache is shared).
            state.invocations.charge_deploy(tenant)
        except RateQuotaExceeded as e:
            state.metrics.wasm_deploy_failures.labels(tenant).inc()
            raise QuotaExceeded(e.message, code=e.kind, retry_after=e.retry_after) from e
    module = await asyncio.to_thread(sandbox.deploy, tenant, wasm)  # compiling takes seconds
    state.metrics.wasm_deploys.labels(tenant).inc()
    return module


def deploy_configured_modules(
    state: ServingState, modules_dir: Path | None, s3_get: module_sources.S3Get | None = None
) -> int:
    """Bring each tenant's module in line with its spec (`spec.wasm`, pinned by sha256): from
    `modules_dir`, the ConfigMaps the operator projects under it, or the spec's S3 URI (see
    module_sources). Runs on every config (re)load, off the event loop; a module that cannot be had
    leaves the tenant's current one (if any) in place and is counted. Returns how many tenants' pinned
    modules are not deployed (the runtime retries while that is not 0)."""
    sandbox = state.sandbox
    if sandbox is None or modules_dir is None:
        return 0
    getter = s3_get
    missing = 0
    for entry in state.tenants.values():
        source = entry.spec.wasm
        current = sandbox.current(entry.name)
        if source is None or (current is not None and current.sha256 == source.sha256):
            continue
        if getter is None and source.s3_uri:
            getter = module_sources.s3_getter()  # only a tenant with an S3 module pays for a client
        try:
            wasm = module_sources.module_bytes(source, modules_dir, getter, state.max_s3_module_bytes)
            sandbox.deploy(entry.name, wasm)
        except module_sources.ModuleUnavailable as e:
            state.metrics.wasm_deploy_failures.labels(entry.name).inc()
            log.error("tenant %s: %s", entry.name, e)
            missing += 1
            continue
        except InvocationFailed as e:
            # A module the sandbox rejects stays rejected: retrying would only repeat the compile.
            state.metrics.wasm_deploy_failures.labels(entry.name).inc()
            log.error(
                "tenant %s: module %s rejected: %s (%s)", entry.name, source.sha256[:12], e.message, e.code
            )
            continue
        state.metrics.wasm_deploys.labels(entry.name).inc()
        log.info("tenant %s: deployed module %s", entry.name, source.sha256[:12])
    return missing
