"""How the server answers errors: OpenAI-style `{"error": {"message", "type", "param", "code"}}`
objects, one constructor per kind (429 busy, 504 timeout, ...), and the app's handlers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...inference.errors import PredictorError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        problems: list[str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.problems = problems  # every invalid field of the request, when there are several


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: ApiError, headers: dict | None = None) -> JSONResponse:
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    if exc.problems:
        body["error"]["problems"] = exc.problems
    return JSONResponse(body, status_code=exc.status, headers=headers)


ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
}


def error_type(status: int) -> str:
    """The OpenAI-style `type` of an error status."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def server_busy() -> ApiError:
    return ApiError(
        429,
        "the server is at its concurrency and queue limits; retry later",
        type="rate_limit_error",
        code="server_busy",
    )


def request_timeout(seconds: float) -> ApiError:
    return ApiError(
        504, f"the request did not finish within {seconds:g} s", type="timeout", code="timeout"
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "bad request: invalid JSON or fields, or prompt + max_tokens over the context"),
        (401, "missing or wrong API key"),
        (404, "unknown task or model"),
        (413, "request body too large"),
        (429, "concurrency and queue limits reached"),
        (504, "request timed out"),
    )
}


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    return ApiError(400, f"invalid request: {problems}", param=".".join(loc) or None, code=None)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure, ours or the framework's, leaves as an OpenAI-style error object."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(PredictorError)
    async def _unanswerable(request: Request, exc: PredictorError):
        return error_response(ApiError(400, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(
            ApiError(exc.status_code, str(exc.detail), type=kind), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(
            ApiError(500, "internal server error; see the server log", type="server_error")
        )
