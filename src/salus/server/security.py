"""The HTTP side of access control: who is calling, for what purpose, and the
audit of every refusal.

``current_principal`` is a FastAPI dependency: it reads the bearer token
(``Authorization: Bearer …``) or the console's session cookie, verifies it,
and returns the :class:`~salus.security.principal.Principal`. Every refusal
(401 and 403, from here or from a service) is written to the audit trail by
:func:`audit_refusal`, called from the one error handler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import Depends, Request

from salus.audit.events import AuditEvent
from salus.errors import Forbidden, InvalidInput, NotAuthenticated, SalusError
from salus.logging import request_id_var
from salus.security.principal import Principal, Purpose
from salus.services import Services

__all__ = [
    "PURPOSE_HEADER",
    "SESSION_COOKIE",
    "CurrentPrincipal",
    "audit_access",
    "audit_refusal",
    "client_address",
    "current_principal",
    "requested_purpose",
    "services_of",
]

log = logging.getLogger("salus.security")

SESSION_COOKIE = "salus_session"
PURPOSE_HEADER = "x-salus-purpose-of-use"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="salus"'}


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticated("Use the Bearer authorization scheme.", headers=_CHALLENGE)
        return value.strip()
    return request.cookies.get(SESSION_COOKIE)


async def current_principal(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise NotAuthenticated(headers=_CHALLENGE)
    services = services_of(request)
    try:
        cached = services.tokens.verify_cached(token)
        if cached is None:
            cached = await asyncio.to_thread(services.tokens.verify, token)
        principal = cached
    except NotAuthenticated as exc:
        exc.headers.setdefault("WWW-Authenticate", _CHALLENGE["WWW-Authenticate"])
        raise
    principal = _with_address(principal, client_address(request))
    request.state.principal = principal
    return principal


def _with_address(principal: Principal, address: str | None) -> Principal:
    from dataclasses import replace

    return replace(principal, address=address) if address else principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def requested_purpose(request: Request) -> Purpose | None:
    """The purpose of use the client declares (``X-Salus-Purpose-Of-Use: TREAT``)."""
    value = request.headers.get(PURPOSE_HEADER)
    if not value:
        return None
    try:
        purpose = Purpose(value.strip().upper())
    except ValueError:
        raise InvalidInput(
            "Unknown purpose of use; use one of " + ", ".join(p.value for p in Purpose) + ".",
            expression=[PURPOSE_HEADER],
        ) from None
    if purpose is Purpose.EMERGENCY:
        raise InvalidInput(
            "Emergency access is requested through break-the-glass.", expression=[PURPOSE_HEADER]
        )
    return purpose


async def audit_access(
    request: Request,
    who: Principal,
    *,
    category: str,
    entity: str,
    description: str,
    action: str = "R",
    patient_key: str | None = None,
    purpose: Purpose | None = None,
) -> None:
    """Record a granted access or change in the audit trail (group commit; the
    response waits for it). The request id comes from the request context."""
    event = AuditEvent.for_principal(
        who,
        category=category,
        action=action,
        entity=entity,
        description=description,
        patient_key=patient_key,
        purpose=purpose,
    )
    await services_of(request).audit.record_async(event)


async def audit_refusal(request: Request, exc: SalusError, route: str) -> None:
    """Record a refused request (401/403) in the audit trail; never raises."""
    if not isinstance(exc, NotAuthenticated | Forbidden):
        return
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return
    principal: Principal | None = getattr(request.state, "principal", None)
    event = AuditEvent.for_principal(
        principal,
        category="auth" if isinstance(exc, NotAuthenticated) else "rest",
        action="E",
        outcome=4,
        entity=f"{request.method} {route}",
        description=f"refused: {exc.message}"[:300],
        request_id=request_id_var.get(),
    )
    if principal is None:
        from dataclasses import replace

        event = replace(event, address=client_address(request))
    try:
        await services.audit.record_async(event)
    except Exception:
        log.exception("could not audit a refused request")
