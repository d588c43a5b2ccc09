"""JSON errors: every failure is ``{"result": "<message>", "status": <code>}`` (HTM-IT's shape, its
"result" key holding the message) with the status code that says what went wrong."""

from __future__ import annotations

import logging

import pika.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from htmengine.bus import MessageBusError
from htmengine.exceptions import (
    MessageQueueNotFound,
    MetricAlreadyExists,
    MetricAlreadyMonitored,
    MetricNotFound,
    MetricStatusChangedError,
)

LOGGER = logging.getLogger("htmengine.webapp")


class ApiError(Exception):
    """An error answered with `status` and `message` (and optional response headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"result": message, "status": status}, status, headers=headers)


# Exceptions of the engine's own layers and the status each one means to an HTTP client.
_STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (MetricNotFound, 404),
    (MetricAlreadyExists, 409),
    (MetricAlreadyMonitored, 409),
    (MetricStatusChangedError, 409),
    (ValueError, 400),
    (TypeError, 400),
)

# The database or the broker is away: the client may retry later.
_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    pika.exceptions.AMQPError,
    MessageBusError,
    MessageQueueNotFound,
    ConnectionError,
)


def api_error_for(exc: BaseException) -> ApiError | None:
    """The ApiError an engine exception maps to, or None (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, _UNAVAILABLE):
        return ApiError(503, f"the database or message broker is unavailable: {exc}")
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return ApiError(status, str(exc))
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        error = api_error_for(exc)
        if error is None:
            LOGGER.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, f"internal error: {exc!r}")
        return error_response(error.status, error.message, error.headers)
