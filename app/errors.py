"""One JSON error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code.", examples=["not_found"])
    message: str = Field(description="Human-readable explanation.", examples=["no dataset 3f2c…"])
    field: str | None = Field(
        None, description="The request field at fault, when there is one.", examples=["file"]
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Invalid(ApiError):
    status, code = 422, "invalid"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


def error_payload(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error shape."""
    descriptions = {
        401: "Missing or unknown API key.",
        404: "No such resource for this principal.",
        409: "The resource is in a state that forbids this.",
        413: "Upload larger than allowed.",
        422: "The request or the uploaded data is invalid.",
        503: "A dependency is unavailable.",
    }
    return {
        s: {"model": ErrorResponse, "description": descriptions.get(s, "Error")} for s in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_payload(exc.code, exc.message, exc.field),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_payload(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in errors
        )
        return JSONResponse(error_payload("invalid", message, field), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_payload("internal_error", f"internal error: {type(exc).__name__}"),
            status_code=500,
        )
