"""Sign-in, sign-out, the language menu and the start page."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import Response

from salus.console import i18n
from salus.console.web import (
    CSRF_COOKIE,
    ConsoleUser,
    NavItem,
    check_csrf,
    console_router,
    nav_item,
    new_csrf_token,
    read_form,
    redirect,
    render,
    safe_next,
)
from salus.errors import NotAuthenticated, RateLimited
from salus.server.security import SESSION_COOKIE, audit_refusal, client_address, services_of

__all__ = ["install"]

_ = i18n.gettext


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(NavItem("/", "Start", 0, lambda principal: True, key="0"))

    @router.get("/")
    async def home(request: Request, principal: ConsoleUser) -> Response:
        return render(request, "home.html", {"roles": sorted(principal.roles)}, title=_("Start"))

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        return render(
            request,
            "login.html",
            {"next": safe_next(request.query_params.get("next")), "username": "", "error": None},
            title=_("Sign in"),
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        services = services_of(request)
        address = client_address(request) or "unknown"
        username = form.get("username", "").strip()[:100]
        target = safe_next(form.get("next"))
        try:
            services.login_rate.hit(address)
            principal = await asyncio.to_thread(
                services.signin.login,
                username,
                form.get("password", ""),
                form.get("code", "").strip() or None,
                address,
            )
        except (NotAuthenticated, RateLimited) as exc:
            await audit_refusal(request, exc, "/login")
            return render(
                request,
                "login.html",
                {"next": target, "username": username, "error": _(exc.message)},
                status_code=exc.http_status,
                title=_("Sign in"),
            )
        issued = await asyncio.to_thread(services.tokens.issue, principal, scopes=None)
        response = redirect(target)
        secure = services.settings.base_url().startswith("https://")
        response.set_cookie(
            SESSION_COOKIE,
            issued.access_token,
            max_age=issued.expires_in,
            httponly=True,
            secure=secure,
            samesite="strict",
            path="/",
        )
        response.set_cookie(
            CSRF_COOKIE,
            new_csrf_token(),
            max_age=issued.expires_in,
            httponly=True,
            secure=secure,
            samesite="strict",
            path="/",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        check_csrf(request, form)
        response = redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    @router.get("/lang")
    async def language(request: Request) -> Response:
        code = request.query_params.get("code", "")
        response = redirect(safe_next(request.query_params.get("next")))
        if code in i18n.LOCALES:
            response.set_cookie(
                i18n.LANGUAGE_COOKIE, code, max_age=365 * 86400, samesite="lax", path="/"
            )
        return response

    api.include_router(router)
