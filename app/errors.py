"""One JSON error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.storage import ObjectMissing, StorageError, storage_full
from models.config import error_message, error_path

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


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"


class InsufficientStorage(ApiError):
    status, code = 507, "insufficient_storage"


# Seconds a client should wait before retrying after a 503 caused by a
# dependency blink (a dropped database connection is replaced at once).
RETRY_AFTER_S = "1"


BODY_PARSE_ERROR = "There was an error parsing the body"


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
    507: "insufficient_storage",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error shape."""
    descriptions = {
        401: "Missing or unknown API key.",
        404: "No such resource for this principal.",
        409: "The resource is in a state that forbids this.",
        413: "Upload larger than allowed (file size, decompressed size or storage quota).",
        415: "The request body is not multipart/form-data.",
        422: "The request or the uploaded data is invalid.",
        429: "Too many active jobs for this principal.",
        503: "A dependency is unavailable; retry after `Retry-After` seconds.",
        507: "The artifact store is full or failed to write.",
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
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): the
            # documented 422 for an invalid request, like any other bad body
            return JSONResponse(
                error_payload("invalid", "the request body is not valid UTF-8 JSON", "body"),
                status_code=422,
            )
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_payload(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the same "<field path>: <message>" as the CLI gives for a config value
        errors = exc.errors()
        where = ("body", "query", "path", "header")
        paths = [error_path(e.get("loc", ())[1:] if e.get("loc", ("",))[0] in where else e.get("loc", ()))
                 for e in errors]
        field = paths[0] if paths and paths[0] else None
        message = "; ".join(f"{path or 'request'}: {error_message(e)}" for path, e in zip(paths, errors, strict=True))
        return JSONResponse(error_payload("invalid", message or "invalid request", field), status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The pool has already discarded the broken connection; the next
        # request gets a fresh one, so telling the client to retry is honest.
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            error_payload("database_unavailable", "the database is unavailable; retry shortly"),
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await _database_down(request, exc)
        if isinstance(exc, DataError):
            # a value validation let through that the database refuses (a NUL
            # byte in text, say): the request's fault, not the server's
            log.warning("value refused by the database: %s", exc.orig)
            return JSONResponse(
                error_payload("invalid", "the request holds a value that cannot be stored"),
                status_code=422,
            )
        return await _unexpected(request, exc)

    @app.exception_handler(StorageError)
    @app.exception_handler(OSError)
    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        if storage_full(exc):
            log.error("storage full: %s", exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return JSONResponse(
                error_payload("insufficient_storage", f"no space left to store the data: {reason}"),
                status_code=507,
            )
        if isinstance(exc, StorageError) and not isinstance(exc, ObjectMissing):
            log.error("storage failure: %s", exc)
            return JSONResponse(
                error_payload("storage_unavailable", f"the artifact store failed: {exc}"),
                status_code=503,
                headers={"Retry-After": RETRY_AFTER_S},
            )
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_payload("internal_error", f"internal error: {type(exc).__name__}"),
            status_code=500,
        )
