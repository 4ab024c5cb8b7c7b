"""Break-the-glass in the console (issue 3, "Cross-hospital access"; ADR 7).

* ``POST /patients/{id}/break-glass``: a clinician states a reason and gets
  emergency access to the patient's records for a limited time, through
  :meth:`~salus.security.care.CareService.break_glass` (the service behind
  ``POST /api/v1/break-glass``: flagged, audited, queued for review).
* ``GET /break-glass/reviews``: the security officer's review queue
  (:meth:`~salus.security.care.CareService.list_break_glass`; network security
  officers see every organization's grants, others their own), and
  ``POST /break-glass/reviews/{id}``: accept or reject with a note.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select

from salus.console import i18n
from salus.console.i18n import N_
from salus.console.pages.patients import (
    access_basis,
    can_break_glass,
    care_reader,
    check_patient_id,
)
from salus.console.web import (
    ConsoleUser,
    NavItem,
    Paging,
    check_csrf,
    console_router,
    has_role,
    nav_item,
    read_form,
    redirect,
    render,
)
from salus.db.tables import users
from salus.errors import Forbidden, InvalidInput
from salus.security.care import MIN_REASON
from salus.security.principal import Principal
from salus.server.security import audit_access, services_of

__all__ = ["install"]

_ = i18n.gettext

STATUSES = (N_("pending"), N_("accepted"), N_("rejected"))
ALL = N_("all")


def _display_names(request: Request, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    with services_of(request).db.read() as conn:
        rows = conn.execute(
            select(users.c.id, users.c.display_name, users.c.username).where(users.c.id.in_(ids))
        )
        return {str(i): str(d or u) for i, d, u in rows}


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(
        NavItem(
            "/break-glass/reviews",
            "Break-the-glass reviews",
            70,
            has_role("security_officer"),
            key="g",
        )
    )

    @router.post("/patients/{patient_id}/break-glass")
    async def break_glass(request: Request, patient_id: str, principal: ConsoleUser) -> Response:
        form = await read_form(request)
        check_csrf(request, form)
        care_reader(request, principal)
        check_patient_id(patient_id)
        if not can_break_glass(principal):
            raise Forbidden(N_("Your roles do not allow break-the-glass access."))
        reason = form.get("reason", "")
        try:
            await asyncio.to_thread(
                services_of(request).care.break_glass, principal, patient_id, reason
            )
        except InvalidInput:
            basis = await access_basis(request, principal, patient_id)
            return render(
                request,
                "patients/restricted.html",
                {
                    "patient_id": patient_id,
                    "basis": basis,
                    "denied": any(r["decision"] == "deny" for r in basis["consent_rules"]),
                    "offer": True,
                    "reason": reason[:2000],
                    "error": _("State the reason for emergency access (at least %(n)s characters).")
                    % {"n": MIN_REASON},
                },
                status_code=400,
                title=_("Access restricted"),
            )
        return redirect(f"/patients/{patient_id}")

    def _reviewer(principal: Principal) -> None:
        if "security_officer" not in principal.roles:
            raise Forbidden(N_("Only security officers review break-the-glass access."))

    @router.get("/break-glass/reviews")
    async def reviews(request: Request, principal: ConsoleUser) -> Response:
        _reviewer(principal)
        status = request.query_params.get("status", "pending")
        if status not in (*STATUSES, "all"):
            status = "pending"
        paging = Paging.of(request, size=25, max_size=100)
        rows: list[dict[str, Any]] = await asyncio.to_thread(
            services_of(request).care.list_break_glass,
            principal,
            None if status == "all" else status,
            paging.size + 1,
            paging.offset,
        )
        await audit_access(
            request,
            principal,
            category="security",
            entity="BreakGlass?list",
            description="break-the-glass review queue read",
        )
        more = len(rows) > paging.size
        rows = rows[: paging.size]
        names = await asyncio.to_thread(
            _display_names, request, sorted({str(r["principal_id"]) for r in rows})
        )
        total = None if more else paging.offset + len(rows)
        return render(
            request,
            "breakglass/reviews.html",
            {
                "rows": rows,
                "names": names,
                "status": status,
                "statuses": STATUSES,
                "paging": paging.with_total(total),
                "done": request.query_params.get("done", ""),
            },
            title=_("Break-the-glass reviews"),
        )

    @router.post("/break-glass/reviews/{grant_id}")
    async def review(request: Request, grant_id: int, principal: ConsoleUser) -> Response:
        form = await read_form(request)
        check_csrf(request, form)
        _reviewer(principal)
        outcome = form.get("outcome", "")
        await asyncio.to_thread(
            services_of(request).care.review_break_glass,
            principal,
            grant_id,
            outcome,
            form.get("note", "")[:2000],
        )
        return redirect(f"/break-glass/reviews?done={grant_id}")

    api.include_router(router)
