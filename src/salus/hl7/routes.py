"""The message-store API: ``/api/hl7/messages`` (list, show, replay).

Who may use it: a hospital's ``hospital_integration`` clients and users and
its ``administrator``s, for that hospital's messages; the network operator's
administrators for every message (including refused ones from unknown
senders). The raw message (patient data) is shown to integration roles only:
administrators handle no clinical data (roles.py) and see the metadata.
Every call is audited; refusals are audited by the error handler.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from sqlalchemy.engine import RowMapping

from salus.errors import Forbidden, NotFound
from salus.hl7.store import SUMMARY
from salus.security.principal import Principal, PrincipalKind
from salus.server.security import CurrentPrincipal, audit_access, services_of

if TYPE_CHECKING:
    from salus.hl7.runtime import Hl7Runtime
    from salus.services import Services

__all__ = ["add_routes", "summary"]

_COLUMNS = [c.name for c in SUMMARY]


def summary(row: RowMapping | dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _COLUMNS:
        value = row[name]
        out[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


def _runtime(services: Services) -> Hl7Runtime:
    if services.hl7 is None:
        raise NotFound("HL7 is not installed.")
    return services.hl7


def _access(services: Services, who: Principal) -> tuple[str | None, bool]:
    """(the organization whose messages the caller sees, or None for all; body allowed)."""
    if who.kind is PrincipalKind.SYSTEM:
        return None, True
    integration = "hospital_integration" in who.roles
    admin = "administrator" in who.roles
    if not (integration or admin):
        raise Forbidden("Only integration and administrator roles use the HL7 message store.")
    network = admin and services.org_kinds.kind(who.org_id) == "operator"
    return (None if network else who.org_id), integration


def _visible(row: RowMapping, org: str | None) -> None:
    if org is not None and row["org_id"] != org:
        raise NotFound("No such HL7 message.")


def add_routes(api: FastAPI) -> None:
    @api.get("/api/hl7/messages", tags=["hl7"])
    async def list_messages(
        request: Request,
        who: CurrentPrincipal,
        state: str | None = Query(default=None, max_length=10),
        message_type: str | None = Query(default=None, alias="type", max_length=20),
        limit: int = Query(default=50, ge=1, le=500),
        before: int | None = Query(default=None, ge=1),
    ) -> dict[str, Any]:
        """Messages of the caller's organization, newest first (no bodies)."""
        services = services_of(request)
        org, _ = _access(services, who)
        rows = await asyncio.to_thread(
            _runtime(services).store.list,
            org_id=org,
            state=state,
            message_type=message_type,
            limit=limit,
            before_id=before,
        )
        await audit_access(request, who, category="hl7", entity="HL7 messages", description="list")
        return {"messages": [summary(r) for r in rows]}

    @api.get("/api/hl7/messages/{uid}", tags=["hl7"])
    async def show_message(request: Request, uid: str, who: CurrentPrincipal) -> dict[str, Any]:
        """One message: its metadata, outcome and (integration roles) the raw text."""
        services = services_of(request)
        org, body_allowed = _access(services, who)
        runtime = _runtime(services)
        row = await asyncio.to_thread(runtime.store.by_uid, uid[:36])
        _visible(row, org)
        result = summary(row)
        if body_allowed:
            raw = await asyncio.to_thread(runtime.store.body, row)
            result["message"] = raw.decode("utf-8", "replace").replace("\r", "\n")
        await audit_access(
            request, who, category="hl7", entity=f"HL7Message/{row['uid']}", description="read"
        )
        return result

    @api.post("/api/hl7/messages/{uid}/replay", tags=["hl7"])
    async def replay_message(request: Request, uid: str, who: CurrentPrincipal) -> dict[str, Any]:
        """Apply a failed or rejected message again (after a mapping or profile fix)."""
        services = services_of(request)
        org, _ = _access(services, who)
        runtime = _runtime(services)
        row = await asyncio.to_thread(runtime.store.by_uid, uid[:36])
        _visible(row, org)
        ack = await asyncio.to_thread(runtime.service.replay, int(row["id"]))
        await audit_access(
            request,
            who,
            category="hl7",
            entity=f"HL7Message/{row['uid']}",
            description="replay",
            action="U",
        )
        after = await asyncio.to_thread(runtime.store.by_uid, row["uid"])
        return {"ack": ack.code, "error": ack.text, **summary(after)}
