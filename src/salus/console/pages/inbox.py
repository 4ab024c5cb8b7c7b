"""The integration inbox: what the hospitals' feeds sent that did not get in.

Three kinds, each with its reason:

* HL7 v2 messages in state ``failed`` or ``rejected`` (the message store,
  :mod:`salus.hl7.store`; HL7 v2.8 2.9 acknowledgment semantics), with a
  Replay button (``HL7 service replay``: the same operation as
  ``POST /api/hl7/messages/{uid}/replay`` and ``salus hl7 replay``);
* DICOM instances that a C-STORE or STOW-RS refused or failed to store
  (:mod:`salus.dicom.failures`; PS3.4 B.2.3 statuses, PS3.18 10.5.3 failure
  reasons);
* dataset submissions that were refused (:mod:`salus.warehouse.datasets`),
  with their row-by-row, column-by-column report.

Who sees what: a hospital's data stewards, integration engineers
(``hospital_integration``) and administrators see their own organization's
feeds; the same roles in the network operator's organization see every
hospital's (and the messages of unknown senders). The raw HL7 message
(patient data) is shown only to integration roles, as the message-store API
does, and each viewing is audited. Replay follows the API's rule
(integration roles and administrators).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select

from salus.console import i18n
from salus.console.web import (
    ConsoleUser,
    NavItem,
    Paging,
    check_csrf,
    console_router,
    has_role,
    nav_item,
    read_form,
    render,
)
from salus.db.tables import audit_events
from salus.db.tables_hl7 import hl7_messages
from salus.dicom.failures import list_store_failures
from salus.errors import Forbidden, InvalidInput, NotFound, SalusError
from salus.hl7.runtime import Hl7Runtime
from salus.hl7.store import SUMMARY
from salus.security.principal import Principal, PrincipalKind
from salus.server.security import audit_access, services_of
from salus.services import Services

__all__ = ["INBOX_ROLES", "install"]

_ = i18n.gettext
N_ = i18n.N_

INBOX_ROLES = ("data_steward", "hospital_integration", "administrator")
REPLAY_ROLES = frozenset({"hospital_integration", "administrator"})
BODY_ROLES = frozenset({"hospital_integration"})
KINDS = {
    "hl7": N_("HL7 v2 messages"),
    "dicom": N_("DICOM instances"),
    "datasets": N_("Dataset submissions"),
}
HL7_STATES = ("failed", "rejected")
STATE_LABELS = {
    "failed": N_("failed"),
    "rejected": N_("rejected"),
    "applied": N_("applied"),
    "received": N_("received"),
}
REFUSED_SUBMISSION = "dataset submission refused"


@dataclass(frozen=True, slots=True)
class Scope:
    """What the signed-in person sees: one organization's feeds or all."""

    org: str | None  # None: every organization (the network operator)
    body: bool  # may read raw HL7 messages
    replay: bool  # may replay

    @property
    def network(self) -> bool:
        return self.org is None


def scope_of(services: Services, who: Principal) -> Scope:
    if who.kind is PrincipalKind.SYSTEM:
        return Scope(None, True, True)
    if not who.roles & set(INBOX_ROLES):
        raise Forbidden(
            N_("The integration inbox is for data stewards, integration and administrators.")
        )
    network = services.org_kinds.kind(who.org_id) == "operator"
    return Scope(
        None if network else who.org_id,
        bool(who.roles & BODY_ROLES),
        bool(who.roles & REPLAY_ROLES),
    )


@dataclass(frozen=True, slots=True)
class Filters:
    kind: str
    org: str | None
    since: date | None
    until: date | None

    def window(self) -> tuple[datetime | None, datetime | None]:
        """``since`` inclusive, ``until`` inclusive (the whole day) as UTC instants."""
        start = datetime.combine(self.since, time(), UTC) if self.since else None
        end = datetime.combine(self.until + timedelta(days=1), time(), UTC) if self.until else None
        return start, end


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(N_("Dates are written YYYY-MM-DD."), expression=[name]) from None


def filters_of(request: Request, scope: Scope) -> Filters:
    params = request.query_params
    kind = params.get("kind") or "hl7"
    if kind not in KINDS:
        raise InvalidInput(N_("Unknown kind of inbox entry."), expression=["kind"])
    org = (params.get("org") or "").strip() or None
    if scope.org is not None:
        if org not in (None, scope.org):
            raise Forbidden(N_("Hospitals see only their own feeds."))
        org = scope.org
    return Filters(
        kind, org, _date(params.get("since"), "since"), _date(params.get("until"), "until")
    )


# -- queries (blocking; run in a thread) -------------------------------------------------


def _hl7_rows(services: Services, flt: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
    c = hl7_messages.c
    query = select(*SUMMARY).where(c.state.in_(HL7_STATES))
    if flt.org is not None:
        query = query.where(c.org_id == flt.org)
    start, end = flt.window()
    if start is not None:
        query = query.where(c.received_at >= start)
    if end is not None:
        query = query.where(c.received_at < end)
    query = query.order_by(c.id.desc()).limit(limit).offset(offset)
    with services.db.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _refused_submissions(
    services: Services, flt: Filters, limit: int, offset: int
) -> list[dict[str, Any]]:
    c = audit_events.c
    query = select(audit_events).where(
        c.category == "rest", c.description == REFUSED_SUBMISSION, c.outcome != 0
    )
    if flt.org is not None:
        query = query.where(c.org_id == flt.org)
    start, end = flt.window()
    if start is not None:
        query = query.where(c.recorded_at >= start)
    if end is not None:
        query = query.where(c.recorded_at < end)
    query = query.order_by(c.seq.desc()).limit(limit).offset(offset)
    with services.db.read() as conn:
        return [_submission(dict(r)) for r in conn.execute(query).mappings()]


def _submission(row: dict[str, Any]) -> dict[str, Any]:
    detail = row.get("detail") or {}
    entity = str(row.get("entity") or "")
    issues = [
        {"row": i[0], "column": i[1], "code": i[2], "message": i[3] if len(i) > 3 else ""}
        for i in detail.get("issues", [])
        if isinstance(i, list) and len(i) >= 3
    ]
    return {
        "seq": int(row["seq"]),
        "recorded_at": row["recorded_at"],
        "org_id": row["org_id"],
        "who": row["principal_id"],
        "dataset": entity.removeprefix("dataset/"),
        "version": detail.get("version"),
        "errors": int(detail.get("errors") or len(issues)),
        "issues": issues,
        "truncated": bool(detail.get("truncated")),
    }


def _submission_by_seq(services: Services, seq: int) -> dict[str, Any]:
    c = audit_events.c
    with services.db.read() as conn:
        row = (
            conn.execute(
                select(audit_events).where(
                    c.seq == seq, c.category == "rest", c.description == REFUSED_SUBMISSION
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(N_("No such refused submission."))
    return _submission(dict(row))


def _dicom_rows(services: Services, flt: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
    start, end = flt.window()
    rows = list_store_failures(
        services.db, org_id=flt.org, since=start, until=end, limit=limit, offset=offset
    )
    for row in rows:
        row["detail"] = row.get("detail") or {}
    return rows


def _organizations(services: Services) -> list[tuple[str, str]]:
    return [(str(o["id"]), str(o["name"])) for o in services.directory.list_organizations()]


def _page(paging: Paging, fetched: list[dict[str, Any]]) -> tuple[Paging, list[dict[str, Any]]]:
    """Rows of this page, and the paging with its total when the last page is reached."""
    if len(fetched) <= paging.size:
        return paging.with_total(paging.offset + len(fetched)), fetched
    return paging, fetched[: paging.size]


# -- pages ------------------------------------------------------------------------------


def _hl7(services: Services) -> Hl7Runtime:
    if services.hl7 is None:
        raise NotFound(N_("HL7 is not installed."))
    return services.hl7


def _hl7_row(services: Services, uid: str, scope: Scope) -> Any:
    row = _hl7(services).store.by_uid(uid[:36])
    if scope.org is not None and row["org_id"] != scope.org:
        raise NotFound(N_("No such HL7 message."))
    return row


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(NavItem("/inbox", N_("Inbox"), 40, has_role(*INBOX_ROLES), key="i"))

    @router.get("/inbox")
    async def inbox(request: Request, principal: ConsoleUser) -> Response:
        services = services_of(request)
        scope = scope_of(services, principal)
        flt = filters_of(request, scope)
        paging = Paging.of(request)
        fetch = {"hl7": _hl7_rows, "dicom": _dicom_rows, "datasets": _refused_submissions}[flt.kind]
        fetched = await asyncio.to_thread(fetch, services, flt, paging.size + 1, paging.offset)
        paging, rows = _page(paging, fetched)
        orgs = await asyncio.to_thread(_organizations, services) if scope.network else []
        await audit_access(
            request,
            principal,
            category="rest",
            entity=f"inbox/{flt.kind}",
            description="integration inbox read",
        )
        return render(
            request,
            "inbox/list.html",
            {
                "flt": flt,
                "scope": scope,
                "kinds": KINDS,
                "states": STATE_LABELS,
                "rows": rows,
                "paging": paging,
                "orgs": orgs,
            },
            title=_("Integration inbox"),
        )

    async def show_message(
        request: Request,
        principal: Principal,
        uid: str,
        outcome: dict[str, Any] | None = None,
        status_code: int = 200,
    ) -> Response:
        services = services_of(request)
        scope = scope_of(services, principal)
        row = await asyncio.to_thread(_hl7_row, services, uid, scope)
        body = None
        if scope.body:
            raw = await asyncio.to_thread(_hl7(services).store.body, row)
            body = raw.decode("utf-8", "replace").replace("\r", "\n")
        await audit_access(
            request,
            principal,
            category="hl7",
            entity=f"HL7Message/{row['uid']}",
            description="read" if body is not None else "read (metadata)",
        )
        return render(
            request,
            "inbox/message.html",
            {
                "row": {c.name: row[c.name] for c in SUMMARY},
                "body": body,
                "scope": scope,
                "states": STATE_LABELS,
                "outcome": outcome,
            },
            title=_("HL7 message"),
            status_code=status_code,
        )

    @router.get("/inbox/hl7/{uid}")
    async def message(request: Request, uid: str, principal: ConsoleUser) -> Response:
        return await show_message(request, principal, uid)

    @router.post("/inbox/hl7/{uid}/replay")
    async def replay(request: Request, uid: str, principal: ConsoleUser) -> Response:
        form = await read_form(request)
        check_csrf(request, form)
        services = services_of(request)
        scope = scope_of(services, principal)
        if not scope.replay:
            raise Forbidden(N_("Only integration roles and administrators replay messages."))
        row = await asyncio.to_thread(_hl7_row, services, uid, scope)
        outcome: dict[str, Any]
        try:
            ack = await asyncio.to_thread(_hl7(services).service.replay, int(row["id"]))
            outcome = {"ok": ack.code == "AA", "code": ack.code, "text": ack.text}
        except SalusError as exc:
            outcome = {"ok": False, "code": None, "text": _(exc.message)}
        await audit_access(
            request,
            principal,
            category="hl7",
            entity=f"HL7Message/{row['uid']}",
            description="replay",
            action="U",
        )
        return await show_message(request, principal, uid, outcome)

    @router.get("/inbox/datasets/{seq}")
    async def submission(request: Request, seq: int, principal: ConsoleUser) -> Response:
        services = services_of(request)
        scope = scope_of(services, principal)
        item = await asyncio.to_thread(_submission_by_seq, services, seq)
        if scope.org is not None and item["org_id"] != scope.org:
            raise NotFound(N_("No such refused submission."))
        paging = Paging.of(request, size=50)
        issues = item["issues"]
        paging = paging.with_total(len(issues))
        await audit_access(
            request,
            principal,
            category="rest",
            entity=f"inbox/datasets/{seq}",
            description="refused submission report read",
        )
        return render(
            request,
            "inbox/submission.html",
            {
                "item": item,
                "issues": issues[paging.offset : paging.offset + paging.size],
                "paging": paging,
            },
            title=_("Refused submission"),
        )

    api.include_router(router)
