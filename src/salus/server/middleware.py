"""Request context: request id, body size limit, access log and metrics.

A plain ASGI middleware (no per-request task or body buffering). The access
log line and the metric labels carry the *route template*
(``/fhir/{type}/{id}``), never the concrete path or query string, which can
hold identifiers and names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from salus.errors import PayloadTooLarge, SalusError
from salus.logging import request_id_var
from salus.metrics import Metrics
from salus.server.errors import media_type_for

__all__ = ["RequestContextMiddleware"]

access_log = logging.getLogger("salus.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: Sent with every response unless the route set its own. Responses carry
#: patient data: nothing is cached by browsers or proxies unless a route says so.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
        b"style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
)


def route_template(scope: Scope) -> str:
    """The matched route's template, or a fixed placeholder when none matched."""
    explicit = scope.get("salus.route")
    if isinstance(explicit, str):
        return explicit
    route = scope.get("route")
    path = getattr(route, "path", None)
    root = scope.get("root_path", "")
    if isinstance(path, str):
        return f"{root}{path}" if path else root or "/"
    if root:  # inside a mounted sub-application that set no template
        return f"{root}/*"
    return "<unmatched>"


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; the app's HTTP error handler answers 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics | None, max_body_bytes: int, hsts: bool = False
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.security_headers = list(SECURITY_HEADERS)
        if hsts:
            self.security_headers.append(
                (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else os.urandom(16).hex()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._send_too_large(scope, send, request_id)
            self._record(scope, 413, started, request_id)
            request_id_var.reset(token)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in self.security_headers if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if not response_started:
                await self._send_too_large(scope, send, request_id)
            status = 413
        except Exception:
            # The application's handler has answered and logged (redacted) when a
            # response started; Starlette re-raises so servers can log it, but
            # uvicorn would log the raw exception text, which may quote input.
            if not response_started:
                access_log.error("unhandled error", exc_info=True)
                await self._send_error(scope, send, request_id)
            status = 500
        finally:
            self._record(scope, status, started, request_id)
            request_id_var.reset(token)

    async def _send_too_large(self, scope: Scope, send: Send, request_id: str) -> None:
        await self._send_outcome(scope, send, request_id, PayloadTooLarge(), close=True)

    async def _send_error(self, scope: Scope, send: Send, request_id: str) -> None:
        await self._send_outcome(scope, send, request_id, SalusError(), close=False)

    async def _send_outcome(
        self, scope: Scope, send: Send, request_id: str, error: SalusError, *, close: bool
    ) -> None:
        body = json.dumps(error.to_operation_outcome(request_id)).encode()
        headers = [
            (b"content-type", media_type_for(scope.get("path", "")).encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send(
            {
                "type": "http.response.start",
                "status": error.http_status,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        method = str(scope.get("method", ""))
        route = route_template(scope)
        if self.metrics is not None:
            self.metrics.observe_request(method, route, status, elapsed)
        if not access_log.isEnabledFor(logging.INFO):
            return
        extra: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "ms": round(elapsed * 1000, 2),
        }
        access_log.info("request", extra=extra)
