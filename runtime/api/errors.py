"""Errors in OpenAI's wire shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the API reports goes through `APIError`, so clients written against OpenAI (and
its SDK's typed exceptions, which key off the status code) behave the same against Realm. The
serving layer's domain errors, the conversation store's and the sandbox's invocation failures
become HTTP statuses here and nowhere else (`api_error`, `invocation_error`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from realm.runtime.conversations import (
    ConversationError,
    ConversationNotFound,
    ConversationQuotaExceeded,
    InvalidConversation,
    LimitExceeded,
    StoreUnavailable,
    VersionConflict,
)
from realm.runtime.sandbox.abi import InvocationErrorCode
from realm.runtime.sandbox.modules import InvocationFailed
from realm.runtime.serving.errors import (
    Busy,
    CollectionNotFound,
    ConversationsDisabled,
    DeadlineExceeded,
    EgressDenied,
    EgressFailed,
    EgressLimit,
    EngineFailed,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    ModuleFailed,
    ModulePinned,
    NoModule,
    NotReady,
    PipelineNotFound,
    QuotaExceeded,
    ServingError,
    StorageQuotaExceeded,
    StoreFailed,
    ToolFailed,
    ToolNotFound,
    Unavailable,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After takes whole seconds; rounding down would invite a retry that fails again.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def error_body(
    message: str, *, type: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def unavailable(message: str = "The server is shutting down; retry on another replica.") -> APIError:
    return APIError(503, message, type="service_unavailable", code="service_unavailable")


# (status, OpenAI error type) of each domain error; anything else is the server's fault (500).
_SERVING_STATUS: dict[type[ServingError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    ModelNotAllowed: (403, "invalid_request_error"),
    ModelNotFound: (404, "invalid_request_error"),
    PipelineNotFound: (404, "invalid_request_error"),
    DeadlineExceeded: (504, "timeout"),
    NoModule: (404, "invalid_request_error"),
    ModulePinned: (409, "invalid_request_error"),
    QuotaExceeded: (429, "rate_limit_exceeded"),
    EngineFailed: (500, "server_error"),
    NotReady: (503, "service_unavailable"),
    Busy: (503, "service_unavailable"),
    Unavailable: (503, "service_unavailable"),
    ConversationsDisabled: (503, "service_unavailable"),
    CollectionNotFound: (404, "invalid_request_error"),
    # As for conversations: deleting something, not waiting, helps.
    StorageQuotaExceeded: (429, "insufficient_quota"),
    StoreFailed: (500, "server_error"),
    # A pipeline's invoke and tool steps: the module's own failure, and outbound calls refused or failed.
    ModuleFailed: (422, "invocation_error"),
    EgressDenied: (403, "invalid_request_error"),
    EgressLimit: (429, "rate_limit_exceeded"),
    ToolNotFound: (404, "invalid_request_error"),
    EgressFailed: (502, "server_error"),
    ToolFailed: (502, "server_error"),
}
_CONVERSATION_STATUS: dict[type[ConversationError], tuple[int, str]] = {
    ConversationNotFound: (404, "invalid_request_error"),
    VersionConflict: (409, "invalid_request_error"),
    LimitExceeded: (400, "invalid_request_error"),
    # The tenant's conversations are at their count or byte quota: deleting some, not waiting, helps.
    ConversationQuotaExceeded: (429, "insufficient_quota"),
    InvalidConversation: (400, "invalid_request_error"),
    StoreUnavailable: (503, "service_unavailable"),
}
# 4xx: the tenant's module or its behaviour is at fault, retrying the same call will not help
# (422), except a deadline, which may depend on load (504). 404/503 are about the deployment.
_INVOCATION_STATUS: dict[InvocationErrorCode, int] = {
    InvocationErrorCode.TENANT_ERROR: 422,
    InvocationErrorCode.TRAP: 422,
    InvocationErrorCode.TIMEOUT: 504,
    InvocationErrorCode.FUEL_EXHAUSTED: 422,
    InvocationErrorCode.MEMORY_LIMIT: 422,
    InvocationErrorCode.RESOURCE_LIMIT: 422,
    InvocationErrorCode.INVALID_MODULE: 422,
    InvocationErrorCode.UNKNOWN_IMPORT: 422,
    InvocationErrorCode.ABI_UNSUPPORTED: 422,
    InvocationErrorCode.MISSING_EXPORT: 422,
    InvocationErrorCode.NO_MODULE: 404,
    InvocationErrorCode.BUSY: 503,
    InvocationErrorCode.OUTPUT_LIMIT: 422,
}


def api_error(e: ServingError | ConversationError, *, param: str | None = None) -> APIError:
    """A domain error as the API reports it; `param` names the request field at fault where the
    error cannot know it (a conversation error on the chat endpoint: `conversation`)."""
    if isinstance(e, ConversationError):
        status, kind = _CONVERSATION_STATUS.get(type(e), (500, "server_error"))
        if isinstance(e, VersionConflict) and param is None:
            param = "expected_version"
        if status >= 500:
            param = None
        return APIError(status, e.message, type=kind, code=e.code, param=param)
    # The nearest class mapped: a refinement (InvalidConstraint of InvalidRequest) keeps its family's status.
    mapped = next((c for c in type(e).__mro__ if c in _SERVING_STATUS), None)
    status, kind = _SERVING_STATUS[mapped] if mapped is not None else (500, "server_error")
    retry_after = e.retry_after if isinstance(e, QuotaExceeded | Busy) else None
    return APIError(
        status, e.message, type=kind, code=e.code, param=param or e.param, retry_after=retry_after
    )


def invocation_status(code: InvocationErrorCode) -> int:
    return _INVOCATION_STATUS[code]


def invocation_error(e: InvocationFailed) -> APIError:
    if e.code == InvocationErrorCode.BUSY:  # the sandbox's own refusal (components asleep past deadlines)
        return APIError(503, e.message, type="service_unavailable", code=str(e.code), retry_after=1.0)
    return APIError(invocation_status(e.code), e.message, type="invocation_error", code=str(e.code))


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    # FastAPI prefixes errors with where the value was ("body", "query"); OpenAI's `param` is the
    # dotted field path alone.
    parts = list(loc)
    if parts and parts[0] in ("body", "query"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(ConversationError)
    async def _conversation_error(_: Request, exc: ConversationError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(InvocationFailed)
    async def _invocation_failed(_: Request, exc: InvocationFailed) -> JSONResponse:
        return invocation_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers schema violations with 400, not FastAPI's default 422.
        errors = exc.errors()
        first = errors[0] if errors else {}
        kind = str(first.get("type", ""))
        param = _loc_to_param(first.get("loc", ()))
        if kind == "json_invalid":
            message = "We could not parse the JSON body of your request: " + str(first.get("msg", ""))
            return APIError(400, message, code="invalid_json").response()
        if kind == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
            return APIError(400, message, code="unknown_parameter", param=param).response()
        if kind == "missing":
            return APIError(
                400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
            ).response()
        details = "; ".join(
            f"{_loc_to_param(e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in errors[:5]
        )
        return APIError(400, f"Invalid request: {details}", code="invalid_value", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Raised by FastAPI itself, e.g. a body that is not UTF-8 ("There was an error parsing the body").
        if exc.status_code == 404:
            return APIError(404, "Not found.", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, "Method not allowed.", code="method_not_allowed").response()
        if exc.status_code == 400:
            # FastAPI's only 400 of its own: a body json.loads refused before validation, e.g. not UTF-8.
            return APIError(400, "The request body is not valid UTF-8 JSON.", code="invalid_json").response()
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return APIError(
            500,
            "The server had an error while processing your request.",
            type="server_error",
            code="internal_error",
        ).response()
