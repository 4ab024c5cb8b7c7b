"""Administration pages: organizations, users, applications (clients) and
role grants, for administrators.

Every read and change goes through :class:`~salus.security.directory.Directory`
(and :class:`~salus.security.signin.SignIn` for the second factor) with the
signed-in principal, so the directory's own rules and audit apply exactly as
on ``/api/v1/admin``: an administrator of the network operator manages the
whole network; a hospital's administrator manages only their organization
(the directory refuses anything else with 403). Secrets are shown once: a new
client's secret and a second factor's ``otpauth://`` URI (RFC 6238 TOTP,
shown with its QR code) are rendered in the response and never stored in
clear. Destructive actions ask for confirmation (``data-confirm``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import segno
from fastapi import FastAPI, Request
from fastapi.responses import Response

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
    redirect,
    render,
)
from salus.errors import Conflict, Forbidden, InvalidInput, NotFound
from salus.security.directory import ORG_KINDS
from salus.security.principal import Principal, PrincipalKind
from salus.security.roles import ROLES
from salus.server.security import audit_access, services_of
from salus.services import Services

__all__ = ["install"]

_ = i18n.gettext
N_ = i18n.N_

#: Messages shown after a change (``?done=``), so that a reload does not repeat it.
DONE = {
    "org-created": N_("The organization was created."),
    "org-enabled": N_("The organization was enabled."),
    "org-disabled": N_("The organization was disabled."),
    "user-created": N_("The user was created."),
    "user-enabled": N_("The user was enabled."),
    "user-disabled": N_("The user was disabled."),
    "user-unlocked": N_("The user was unlocked."),
    "password-set": N_("The password was changed."),
    "role-granted": N_("The role was granted."),
    "role-revoked": N_("The role was revoked."),
    "client-enabled": N_("The application was enabled."),
    "client-disabled": N_("The application was disabled."),
}
ROLE_TITLES = {
    "clinician": N_("Clinician"),
    "hospital_integration": N_("Hospital integration"),
    "data_steward": N_("Hospital data steward"),
    "authority_analyst": N_("Health authority analyst"),
    "researcher": N_("Researcher"),
    "security_officer": N_("Security officer"),
    "administrator": N_("Administrator"),
}
KIND_TITLES = {
    "hospital": N_("hospital"),
    "authority": N_("health authority"),
    "research": N_("research body"),
    "operator": N_("network operator"),
}


#: Messages of the directory's refusals that administrators meet in these pages,
#: extracted for translation (an error's message is translated when shown).
DIRECTORY_MESSAGES = (
    N_("A client with this id already exists."),
    N_("A password needs more distinct characters."),
    N_("A password must have at least 12 characters."),
    N_("A user with this username already exists."),
    N_("Administrators may only manage their own organization."),
    N_("An organization needs a name."),
    N_("An organization with this id already exists."),
    N_("An organization id is 2-63 lower-case letters, digits or '-'."),
    N_("A username is 3-100 letters, digits or . _ @ -."),
    N_("A client id is 3-100 letters, digits or . _ -."),
    N_("No such organization."),
    N_("No such role grant."),
    N_("Only administrators may change the directory."),
    N_("Only network administrators may appoint network administrators."),
    N_("Only network administrators may manage organizations."),
    N_("The organization is disabled."),
    N_("This role exists only in hospitals."),
)


def _require_admin(services: Services, who: Principal) -> bool:
    """Refuse non-administrators; True for the network operator's."""
    if "administrator" not in who.roles:
        raise Forbidden(N_("Only administrators use the administration pages."))
    return services.org_kinds.kind(who.org_id) == "operator"


def _organizations(services: Services, who: Principal, network: bool) -> list[dict[str, Any]]:
    rows = services.directory.list_organizations()
    return rows if network else [r for r in rows if r["id"] == who.org_id]


def _done(request: Request) -> str | None:
    code = request.query_params.get("done")
    return _(DONE[code]) if code in DONE else None


def _roles_of(form: dict[str, str]) -> list[str]:
    return [name for name in ROLES if form.get(f"role_{name}") == "on"]


def _find(rows: list[dict[str, Any]], key: str, value: str, missing: str) -> dict[str, Any]:
    for row in rows:
        if str(row[key]) == value:
            return row
    raise NotFound(missing)


def _qr(uri: str) -> str:
    """The QR code of ``uri`` as inline SVG (ISO/IEC 18004, drawn on the server)."""
    svg: str = segno.make(uri, error="m").svg_inline(scale=5, title=None)
    return svg


async def _admin_form(request: Request, who: Principal) -> tuple[dict[str, str], Services]:
    """The posted form of an administration action, once its CSRF token and the
    administrator's role are checked."""
    form = await read_form(request)
    check_csrf(request, form)
    services = services_of(request)
    _require_admin(services, who)
    return form, services


async def _read(request: Request, who: Principal, entity: str) -> None:
    await audit_access(
        request, who, category="admin", action="R", entity=entity, description="directory read"
    )


def install(api: FastAPI) -> None:  # noqa: C901 - one route per directory action
    router = console_router()
    nav_item(NavItem("/admin", N_("Administration"), 80, has_role("administrator"), key="d"))

    def common(request: Request, who: Principal, network: bool) -> dict[str, Any]:
        return {
            "network": network,
            "done": _done(request),
            "roles": ROLES,
            "role_titles": ROLE_TITLES,
            "kind_titles": KIND_TITLES,
            "kinds": ORG_KINDS,
            "own_org": who.org_id,
        }

    async def list_page(
        request: Request,
        who: Principal,
        network: bool,
        rows: list[dict[str, Any]],
        *,
        template: str,
        title: str,
        entity: str,
        error: str | None,
        form: Any,
        **extra: Any,
    ) -> Response:
        """One page of a directory list, audited as a read, with the form of
        a failed creation (422) shown again above it."""
        paging = Paging.of(request).with_total(len(rows))
        await _read(request, who, entity)
        return render(
            request,
            template,
            {
                **common(request, who, network),
                "rows": rows[paging.offset : paging.offset + paging.size],
                "paging": paging,
                "error": error,
                "form": form or {},
                **extra,
            },
            title=title,
            status_code=422 if error else 200,
        )

    @router.get("/admin")
    async def admin_home(request: Request, principal: ConsoleUser) -> Response:
        _require_admin(services_of(request), principal)
        return redirect("/admin/users")

    # -- organizations ---------------------------------------------------------------

    async def organizations_page(
        request: Request, who: Principal, error: str | None = None, form: Any = None
    ) -> Response:
        services = services_of(request)
        network = _require_admin(services, who)
        rows = await asyncio.to_thread(_organizations, services, who, network)
        return await list_page(
            request,
            who,
            network,
            rows,
            template="admin/organizations.html",
            title=_("Organizations"),
            entity="Organization?list",
            error=error,
            form=form,
        )

    @router.get("/admin/organizations")
    async def organizations(request: Request, principal: ConsoleUser) -> Response:
        return await organizations_page(request, principal)

    @router.post("/admin/organizations")
    async def create_organization(request: Request, principal: ConsoleUser) -> Response:
        form, services = await _admin_form(request, principal)
        try:
            await asyncio.to_thread(
                services.directory.create_organization,
                principal,
                form.get("id", "").strip(),
                form.get("name", "").strip(),
                form.get("kind", ""),
            )
        except (InvalidInput, Conflict) as exc:
            return await organizations_page(request, principal, _(exc.message), form)
        return redirect("/admin/organizations?done=org-created")

    @router.post("/admin/organizations/{org_id}/active")
    async def organization_active(
        request: Request, org_id: str, principal: ConsoleUser
    ) -> Response:
        form, services = await _admin_form(request, principal)
        active = form.get("active") == "1"
        await asyncio.to_thread(
            services.directory.set_organization_active, principal, org_id, active
        )
        services.org_kinds.invalidate()
        done = "org-enabled" if active else "org-disabled"
        return redirect(f"/admin/organizations?done={done}")

    # -- users -----------------------------------------------------------------------

    async def users_page(
        request: Request, who: Principal, error: str | None = None, form: Any = None
    ) -> Response:
        services = services_of(request)
        network = _require_admin(services, who)
        query = (request.query_params.get("q") or "").strip().lower()[:100]
        rows = await asyncio.to_thread(services.directory.list_users, who)
        if query:
            rows = [
                r
                for r in rows
                if query in str(r["username"]).lower() or query in str(r["display_name"]).lower()
            ]
        orgs = await asyncio.to_thread(_organizations, services, who, network)
        return await list_page(
            request,
            who,
            network,
            rows,
            template="admin/users.html",
            title=_("Users"),
            entity="User?list",
            error=error,
            form=form,
            q=query,
            orgs=[o for o in orgs if o["active"]],
        )

    @router.get("/admin/users")
    async def users(request: Request, principal: ConsoleUser) -> Response:
        return await users_page(request, principal)

    @router.post("/admin/users")
    async def create_user(request: Request, principal: ConsoleUser) -> Response:
        form, services = await _admin_form(request, principal)
        try:
            user_id = await asyncio.to_thread(
                lambda: services.directory.create_user(
                    principal,
                    username=form.get("username", "").strip(),
                    org_id=form.get("org", principal.org_id),
                    display_name=form.get("display_name", "").strip(),
                    password=form.get("password", ""),
                    roles=_roles_of(form),
                )
            )
        except (InvalidInput, Conflict) as exc:
            form.pop("password", None)
            return await users_page(request, principal, _(exc.message), form)
        return redirect(f"/admin/users/{user_id}?done=user-created")

    async def user_page(
        request: Request,
        who: Principal,
        user_id: str,
        *,
        error: str | None = None,
        enrolled: str | None = None,
    ) -> Response:
        services = services_of(request)
        network = _require_admin(services, who)
        rows = await asyncio.to_thread(services.directory.list_users, who)
        user = _find(rows, "id", user_id, N_("No such user."))
        await _read(request, who, f"User/{user_id}")
        return render(
            request,
            "admin/user.html",
            {
                **common(request, who, network),
                "user": user,
                "error": error,
                "enrolled": enrolled,
                "qr": _qr(enrolled) if enrolled else None,
            },
            title=str(user["username"]),
            status_code=422 if error else 200,
        )

    @router.get("/admin/users/{user_id}")
    async def user(request: Request, user_id: str, principal: ConsoleUser) -> Response:
        return await user_page(request, principal, user_id)

    @router.post("/admin/users/{user_id}/{action}")
    async def user_action(
        request: Request, user_id: str, action: str, principal: ConsoleUser
    ) -> Response:
        form, services = await _admin_form(request, principal)
        directory = services.directory
        done: str
        try:
            if action == "active":
                active = form.get("active") == "1"
                await asyncio.to_thread(directory.set_user_active, principal, user_id, active)
                done = "user-enabled" if active else "user-disabled"
            elif action == "unlock":
                await asyncio.to_thread(directory.unlock_user, principal, user_id)
                done = "user-unlocked"
            elif action == "password":
                await asyncio.to_thread(
                    directory.set_password, principal, user_id, form.get("password", "")
                )
                done = "password-set"
            elif action == "totp":
                uri = await asyncio.to_thread(services.signin.enroll_totp, principal, user_id)
                shown = await user_page(request, principal, user_id, enrolled=uri)
                shown.headers["Cache-Control"] = "no-store"
                return shown
            elif action == "grant":
                await asyncio.to_thread(
                    directory.grant_role,
                    principal,
                    PrincipalKind.USER,
                    user_id,
                    form.get("role", ""),
                )
                done = "role-granted"
            elif action == "revoke":
                await asyncio.to_thread(
                    directory.revoke_role,
                    principal,
                    PrincipalKind.USER,
                    user_id,
                    form.get("role", ""),
                )
                done = "role-revoked"
            else:
                raise NotFound(N_("No such action."))
        except InvalidInput as exc:
            return await user_page(request, principal, user_id, error=_(exc.message))
        return redirect(f"/admin/users/{user_id}?done={done}")

    # -- applications (clients) ------------------------------------------------------

    async def clients_page(
        request: Request,
        who: Principal,
        *,
        error: str | None = None,
        form: Any = None,
        created: dict[str, Any] | None = None,
    ) -> Response:
        services = services_of(request)
        network = _require_admin(services, who)
        rows = await asyncio.to_thread(services.directory.list_clients, who)
        orgs = await asyncio.to_thread(_organizations, services, who, network)
        return await list_page(
            request,
            who,
            network,
            rows,
            template="admin/clients.html",
            title=_("Applications"),
            entity="Client?list",
            error=error,
            form=form,
            orgs=[o for o in orgs if o["active"]],
            created=created,
        )

    @router.get("/admin/clients")
    async def clients(request: Request, principal: ConsoleUser) -> Response:
        return await clients_page(request, principal)

    @router.post("/admin/clients")
    async def create_client(request: Request, principal: ConsoleUser) -> Response:
        form, services = await _admin_form(request, principal)
        try:
            made = await asyncio.to_thread(
                lambda: services.directory.create_client(
                    principal,
                    client_id=form.get("client_id", "").strip(),
                    org_id=form.get("org", principal.org_id),
                    name=form.get("name", "").strip(),
                    auth_method="client_secret",
                    roles=_roles_of(form),
                )
            )
        except (InvalidInput, Conflict) as exc:
            return await clients_page(request, principal, error=_(exc.message), form=form)
        response = await clients_page(
            request,
            principal,
            created={"client_id": made.client_id, "secret": made.secret},
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get("/admin/clients/{client_id}")
    async def client(request: Request, client_id: str, principal: ConsoleUser) -> Response:
        services = services_of(request)
        network = _require_admin(services, principal)
        rows = await asyncio.to_thread(services.directory.list_clients, principal)
        found = _find(rows, "id", client_id, N_("No such client."))
        await _read(request, principal, f"Client/{client_id}")
        return render(
            request,
            "admin/client.html",
            {**common(request, principal, network), "client": found},
            title=str(found["id"]),
        )

    @router.post("/admin/clients/{client_id}/{action}")
    async def client_action(
        request: Request, client_id: str, action: str, principal: ConsoleUser
    ) -> Response:
        form, services = await _admin_form(request, principal)
        directory = services.directory
        if action == "active":
            active = form.get("active") == "1"
            await asyncio.to_thread(directory.set_client_active, principal, client_id, active)
            done = "client-enabled" if active else "client-disabled"
        elif action in ("grant", "revoke"):
            change = directory.grant_role if action == "grant" else directory.revoke_role
            await asyncio.to_thread(
                change, principal, PrincipalKind.CLIENT, client_id, form.get("role", "")
            )
            done = "role-granted" if action == "grant" else "role-revoked"
        else:
            raise NotFound(N_("No such action."))
        return redirect(f"/admin/clients/{client_id}?done={done}")

    api.include_router(router)
