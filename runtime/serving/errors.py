"""Why the serving layer refused or could not serve a request, whatever door it came in by.

Each class has one machine-readable `reason`; the HTTP API (runtime/api/errors.py) and the
sandbox (runtime/sandbox/context.py) each map reasons to their own codes, so nothing here knows
HTTP statuses or ABI codes. `code` is the detailed error code a client sees (e.g. which limit a
request broke) and `param` the request field at fault, when there is one.
"""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    reason: ClassVar[str] = "serving_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class InvalidRequest(ServingError):
    """The request itself is at fault: a limit it breaks, a value out of range, a prompt the
    engine cannot take. Retrying it unchanged will not help."""

    reason = "invalid_request"


class InvalidConstraint(InvalidRequest):
    """The requested output constraint (JSON schema, regex, grammar) does not compile."""

    reason = "invalid_constraint"

    def __init__(
        self, message: str, *, code: str | None = "invalid_constraint", param: str | None = None
    ) -> None:
        super().__init__(message, code=code, param=param)


class ModelNotFound(ServingError):
    reason = "model_not_found"


class ModelNotAllowed(ServingError):
    """The tenant may not use the model (or is no longer configured at all)."""

    reason = "model_not_allowed"


class NotReady(ServingError):
    """What the request needs (a model, the scheduler, the sandbox) is still loading."""

    reason = "not_ready"


class QuotaExceeded(ServingError):
    """A rate quota or the tenant's queue is full; retrying before `retry_after` is futile."""

    reason = "quota_exceeded"

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Busy(ServingError):
    """Every slot the request could take is in use and its queue is full, or it waited too long for
    one: the runtime is saturated, not the request wrong; retrying after `retry_after` may succeed."""

    reason = "busy"

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(ServingError):
    """The runtime is draining, or cancelled the request: another replica may serve it."""

    reason = "unavailable"


class EngineFailed(ServingError):
    """The engine failed while generating (not the request's fault)."""

    reason = "engine_failed"


class ConversationsDisabled(ServingError):
    """This runtime has no conversation store."""

    reason = "conversations_disabled"


class NoModule(ServingError):
    """The tenant has no WebAssembly module deployed."""

    reason = "no_module"


class ModulePinned(ServingError):
    """The tenant's module is pinned by its spec (`spec.wasm`): an upload would run a program the
    platform did not declare, and the next config reload would replace it anyway."""

    reason = "module_pinned"


class EgressDenied(ServingError):
    """An outbound call the tenant may not make: off its allowlist, a forbidden address, a malformed URL
    or a header the caller may not set (`code` says which, docs/egress.md)."""

    reason = "egress_denied"


class EgressFailed(ServingError):
    """An allowed outbound call that did not complete: unreachable, TLS, protocol, too many redirects,
    timed out (`code`)."""

    reason = "egress_failed"


class EgressLimit(ServingError):
    """The invocation's outbound calls or bytes are spent, or a response is larger than what is left."""

    reason = "egress_limit"


# ---- tools (ABI 1.3): MCP servers a tenant's module reaches (runtime/serving/mcp.py) -------------


class ToolNotFound(ServingError):
    """The tenant has no MCP server of that name."""

    reason = "tool_not_found"


class ToolFailed(ServingError):
    """The MCP server answered a call with a protocol-level error (a tool's own failure is a result)."""

    reason = "tool_failed"


class CollectionNotFound(ServingError):
    """No collection of this tenant has that id (another tenant's id reads the same)."""

    reason = "collection_not_found"


class StorageQuotaExceeded(ServingError):
    """A write would pass one of the Tenant's spec.vectors limits; waiting does not help."""

    reason = "storage_quota_exceeded"


class StoreFailed(ServingError):
    """A kept object did not verify (its sha256 differs from what its manifest recorded)."""

    reason = "store_failed"


# ---- pipelines (runtime/serving/pipelines.py) ------------------------------------------------------


class DeadlineExceeded(ServingError):
    """A deadline the request's own declaration set (a pipeline step's or run's timeoutSeconds) passed."""

    reason = "deadline_exceeded"


class ModuleFailed(ServingError):
    """The tenant's module, run as a pipeline's invoke step, failed on its own (`code`: the invocation's
    error code, docs/abi.md: tenant_error, wasm_trap, fuel_exhausted, ...)."""

    reason = "module_failed"


class PipelineNotFound(ServingError):
    """No pipeline of that name runs as this tenant (another tenant's pipeline reads the same)."""

    reason = "pipeline_not_found"
