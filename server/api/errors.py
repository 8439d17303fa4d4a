"""API errors: one JSON shape, `{"error": {"status": 404, "message": "...", "field": ...}}`."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server.persistence.availability import unreachable

log = logging.getLogger("tandem.api")

M = TypeVar("M", bound=BaseModel)

MAX_JSON_BYTES = 1024 * 1024


class ApiError(Exception):
    """Raised by a handler; becomes a JSON error response with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers
        self.details: list[dict[str, str]] = []


def error_response(
    status: int,
    message: str,
    *,
    field: str | None = None,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"status": status, "message": message}
    if field is not None:
        error["field"] = field
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status, headers=headers)


def not_found(what: str, key: object, *, field: str | None = None) -> ApiError:
    return ApiError(404, f"{what} {key} not found", field=field)


def invalid(exc: ValidationError, *, prefix: str = "") -> ApiError:
    """422 naming the field (or query parameter) of the first problem, listing every one."""
    details = []
    for problem in exc.errors(include_url=False):
        field = prefix + ".".join(str(part) for part in problem["loc"]) or "body"
        details.append({"field": field, "message": problem["msg"]})
    first = details[0] if details else {"field": "body", "message": "invalid"}
    error = ApiError(422, f"{first['field']}: {first['message']}", field=first["field"])
    error.details = details
    return error


def parse(model: type[M], data: object, *, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, prefix=prefix) from None


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body validated by `model`; 422 if it is not JSON or does not fit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise ApiError(413, f"a JSON body is at most {MAX_JSON_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise ApiError(413, f"a JSON body is at most {MAX_JSON_BYTES} bytes")
    if not raw.strip():
        raise ApiError(422, "body: a JSON object is required", field="body")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(422, "body: not valid JSON", field="body") from None
    return parse(model, data)


def parse_query(request: Request, model: type[M]) -> M:
    """Query parameters validated by `model`; empty values count as absent."""
    data = {key: value for key, value in request.query_params.items() if value != ""}
    data.pop("token", None)
    return parse(model, data)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.message, field=exc.field, details=exc.details, headers=exc.headers
    )


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no such endpoint: {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, message, headers=headers)


async def on_disconnect(request: Request, exc: Exception) -> Response:
    """The client left mid-request (an upload cut off): nothing to answer, nothing stored."""
    log.info("%s %s: the client disconnected", request.method, request.url.path)
    return Response(status_code=499)


# 503 for a request that the database failed before it changed anything (and for edits refused
# before they are applied, server/api/storage.py).
NOTHING_CHANGED = "the database is unavailable; nothing was changed; try again later"
RETRY_AFTER = {"Retry-After": "5"}


async def on_database_error(request: Request, exc: Exception) -> Response:
    """A database error: 503 when the database could not be reached or took no writes (the
    transaction, if any, was not committed), otherwise a 500 like any other failure."""
    if unreachable(exc):
        log.info("%s %s: 503, database unreachable: %s", request.method, request.url.path, exc)
        return error_response(503, NOTHING_CHANGED, headers=RETRY_AFTER)
    log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
    return error_response(500, "internal error")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback is logged by the server once this handler has answered.
    log.error("%s %s failed: %r", request.method, request.url.path, exc)
    return error_response(500, "internal error")


HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    ClientDisconnect: on_disconnect,
    # Connections refused or reset (OSError), driver errors, pool timeouts.
    OSError: on_database_error,
    sa_exc.DBAPIError: on_database_error,
    sa_exc.TimeoutError: on_database_error,
    Exception: on_unexpected,
}
