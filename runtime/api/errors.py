"""Errors in OpenAI's wire shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the API reports goes through `APIError`, so clients written against OpenAI (and
its SDK's typed exceptions, which key off the status code) behave the same against Realm.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def bad_request(message: str, *, code: str | None = None, param: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


def unavailable(message: str = "The server is shutting down; retry on another replica.") -> APIError:
    return APIError(503, message, type="service_unavailable", code="service_unavailable")


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    # FastAPI prefixes body errors with "body"; OpenAI's `param` is the dotted field path.
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

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
