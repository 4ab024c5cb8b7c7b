"""Every HTTP error response has one shape: a FHIR OperationOutcome.

Services raise :class:`~salus.errors.SalusError`; framework errors (unknown
route, wrong method, request validation) and unexpected exceptions are
turned into the matching class here, so clients (and the contract test)
see the same body whatever went wrong. Unexpected exceptions become a
generic 500 whose text reveals nothing; the traceback is logged with
foreign exception messages redacted.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from salus import errors
from salus.logging import request_id_var

__all__ = ["error_response", "handle_error", "install_error_handlers", "media_type_for"]

log = logging.getLogger("salus.http")

FHIR_JSON = "application/fhir+json"

_BY_STATUS: dict[int, type[errors.SalusError]] = {
    400: errors.InvalidInput,
    401: errors.NotAuthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    406: errors.NotAcceptable,
    409: errors.Conflict,
    410: errors.Gone,
    412: errors.PreconditionFailed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.UnprocessableContent,
    429: errors.RateLimited,
    501: errors.NotSupported,
    503: errors.Unavailable,
}


def media_type_for(path: str) -> str:
    return FHIR_JSON if path == "/fhir" or path.startswith("/fhir/") else "application/json"


def error_response(exc: errors.SalusError, path: str) -> Response:
    body = exc.to_operation_outcome(request_id_var.get())
    return JSONResponse(
        body, status_code=exc.http_status, headers=exc.headers, media_type=media_type_for(path)
    )


def _from_http_exception(exc: HTTPException) -> errors.SalusError:
    cls = _BY_STATUS.get(exc.status_code)
    if cls is None:
        cls = errors.InvalidInput if exc.status_code < 500 else errors.SalusError
    headers = dict(exc.headers or {})
    error = cls(headers=headers)
    if cls is errors.InvalidInput and exc.status_code != 400:
        # Keep the framework's status when no class of the tree matches it.
        error.http_status = exc.status_code  # type: ignore[misc]
    return error


def _validation_error(exc: RequestValidationError) -> errors.SalusError:
    # Name the offending fields, never echo their values.
    expressions = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body",)]
        if loc:
            expressions.append(".".join(loc))
    return errors.InvalidInput(
        "The request is not valid" + (f": check {', '.join(expressions)}." if expressions else "."),
        expression=expressions,
    )


async def _salus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.SalusError)  # noqa: S101 - registered for this type
    if exc.http_status >= 500:
        log.error("request failed", exc_info=exc, extra={"code": exc.code})
    if exc.http_status in (401, 403):
        from salus.server.middleware import route_template
        from salus.server.security import audit_refusal

        await audit_refusal(request, exc, route_template(request.scope))
    return error_response(exc, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101
    return error_response(_from_http_exception(exc), request.url.path)


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    return error_response(_validation_error(exc), request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    if _database_unreachable(exc):
        log.error("database unreachable", exc_info=exc)
        return error_response(
            errors.Unavailable("The database is not reachable; retry later."), request.url.path
        )
    log.error("unexpected error", exc_info=exc)
    return error_response(errors.SalusError(), request.url.path)


def _database_unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (not a bug): 503, not 500."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


_HANDLERS: dict[Any, Any] = {
    errors.SalusError: _salus_error,
    HTTPException: _http_error,
    RequestValidationError: _request_validation_error,
    Exception: _unexpected,
}


async def handle_error(request: Request, exc: Exception) -> Response:
    """The error response for ``exc``: what the app's handlers answer, for ASGI
    paths that do not go through FastAPI's exception middleware."""
    for exc_class, handler in _HANDLERS.items():
        if isinstance(exc, exc_class):
            response: Response = await handler(request, exc)
            return response
    raise exc  # pragma: no cover - Exception matches everything above


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in _HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
