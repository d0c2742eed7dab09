"""Host ABI v1: version, error codes and payloads, shared by both bindings.

The WIT package in `wit/tenant.wit` is the source of truth; the core-module binding (`realm`
import module, JSON payloads, pointer/length pairs) mirrors it function for function.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

ABI_MAJOR = 1
ABI_MINOR = 0
WIT_PACKAGE = "realm:tenant"
WIT_HOST_INTERFACE = f"{WIT_PACKAGE}/host@{ABI_MAJOR}.{ABI_MINOR}.0"
CORE_IMPORT_MODULE = "realm"
# A core module declares the ABI it speaks by exporting `realm_abi_version() -> i32`
# returning (major << 16) | minor.
CORE_VERSION_EXPORT = "realm_abi_version"
CORE_RUN_EXPORT = "realm_run"

MAX_PAYLOAD_BYTES = 1 << 20  # one host-call argument or result


class ErrorCode(enum.IntEnum):
    """Host-call failures. Core modules get `-code` as the i64 result; components get the
    WIT enum case of the same name (kebab-case)."""

    INVALID_ARGUMENT = 1
    OUT_OF_BOUNDS = 2
    MODEL_NOT_ALLOWED = 3
    MODEL_NOT_FOUND = 4
    QUOTA_EXCEEDED = 5
    ENGINE_ERROR = 6
    TOO_LARGE = 7
    INVALID_UTF8 = 8
    UNSUPPORTED = 9
    NO_RESULT = 10  # core only: realm_result_read with nothing pending
    BUFFER_TOO_SMALL = 11  # core only: realm_result_read into a buffer shorter than the result

    @property
    def wit_name(self) -> str:
        return self.name.lower().replace("_", "-")


class HostError(Exception):
    """A host call the guest made wrongly or that could not be served: the guest sees a code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateParams(Payload):
    model: str = Field(..., min_length=1)
    prompt: str
    max_tokens: int = Field(64, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = Field(None, ge=0, lt=1 << 64)


class Generation(Payload):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ModelInfoPayload(Payload):
    name: str
    version: str
    engine: str
    context_length: int
    vocab_size: int
    has_chat_template: bool


class InvocationErrorCode(enum.StrEnum):
    """Why an invocation as a whole failed (HTTP error body `code`), documented in docs/abi.md."""

    TENANT_ERROR = "tenant_error"  # the module returned an error itself
    TRAP = "wasm_trap"  # unreachable, out-of-bounds memory access, stack overflow, ...
    TIMEOUT = "wasm_timeout"  # wall-clock deadline (epoch interruption)
    FUEL_EXHAUSTED = "wasm_fuel_exhausted"
    MEMORY_LIMIT = "wasm_memory_limit"  # instantiation needs more than the tenant's cap
    RESOURCE_LIMIT = "wasm_resource_limit"  # table or instance limits
    INVALID_MODULE = "wasm_invalid_module"  # not WebAssembly, or does not validate
    UNKNOWN_IMPORT = "wasm_unknown_import"  # imports something the host does not provide
    ABI_UNSUPPORTED = "wasm_abi_unsupported"  # declares an ABI version this host does not speak
    MISSING_EXPORT = "wasm_missing_export"
    NO_MODULE = "wasm_no_module"  # the tenant has no module deployed
    BUSY = "wasm_busy"  # too many invocations in flight
