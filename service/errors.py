"""Domain errors → HTTP, in one place (CONTRACT §4): ``{"error": {"code": "...", "message": "..."}}``.

``model/`` and ``index/`` raise plain exceptions; the service raises :class:`ServiceError` subclasses. Every
handler here answers with the contract's error body; nothing else ever reaches a client, and an unexpected
exception is logged and answered with a generic 500 without a traceback.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from index.errors import CodeFormatError, CodeSpaceError, HashIndexError
from model.errors import CheckpointError, DataError
from service.storage import BlobStoreError

log = logging.getLogger(__name__)


class CodedError(Exception):
    """The one base of the errors that carry a stable machine-readable ``code`` (the ``code`` of the contract's
    error body, or of an entry in a job's ``errors``): each class sets a default, a raise may name a precise one.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ServiceError(CodedError):
    """An error with its HTTP status and a stable machine-readable ``code``."""

    status: int = 400
    code = "bad_request"


class BadRequestError(ServiceError):
    status, code = 400, "bad_request"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class ConflictError(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class UnprocessableError(ServiceError):
    status, code = 422, "unprocessable"


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class ModelSwitchedError(NotReadyError):
    """The model this request started with is no longer the active one (another process activated the next):
    the search route swaps to the active model and answers with it."""

    code = "model_switching"


class TooBusyError(ServiceError):
    """More CPU work queued than the server accepts (``METAH_CPU_QUEUE``): answered with ``Retry-After``."""

    status, code = 429, "too_busy"

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_busy",
    503: "not_ready",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


# No space left on the device, or over the user's quota: a full disk, whatever the file system calls it.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def to_service_error(exc: Exception) -> ServiceError | None:
    """The HTTP meaning of an error raised by ``model/`` or ``index/`` (``None``: not a client's fault)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, DataError):
        return UnprocessableError(str(exc), code="unreadable_image")
    if isinstance(exc, CodeSpaceError):
        return ConflictError(str(exc), code="code_space_mismatch")
    if isinstance(exc, CodeFormatError):
        return UnprocessableError(str(exc), code="invalid_code")
    if isinstance(exc, CheckpointError | HashIndexError):
        return NotReadyError(str(exc), code="model_unavailable")
    if (isinstance(exc, OSError) and exc.errno in DISK_FULL) or (
        isinstance(exc, OperationalError) and "disk is full" in str(exc)  # SQLITE_FULL
    ):
        log.error("storage full: %s", exc)
        return NotReadyError("the server's storage is full: nothing was stored", code="storage_full")
    if isinstance(exc, OperationalError):
        log.warning("database unavailable: %s", exc)
        return NotReadyError("the database is unavailable", code="database_unavailable")
    if isinstance(exc, BlobStoreError):  # the details (endpoint, bucket) go to the log, not to the client
        log.error("blob store unavailable: %s", exc)
        return NotReadyError(f"the blob store is unavailable: {exc.reason}", code="storage_unavailable")
    return None


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    error = to_service_error(exc)
    if error is None:  # an OSError other than a full disk
        return await _on_unexpected(request, exc)
    headers = {"WWW-Authenticate": "X-API-Key"} if error.status == 401 else None
    if isinstance(error, TooBusyError):
        headers = {"Retry-After": str(error.retry_after_s)}
    return error_response(error.status, error.code, error.message, headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", _describe_validation(exc))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    for family in (ServiceError, DataError, CheckpointError, HashIndexError, OperationalError, BlobStoreError, OSError):
        app.add_exception_handler(family, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
