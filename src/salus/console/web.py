"""The console's page machinery: templates, sign-in, CSRF, navigation, paging.

Every console page is a FastAPI route on :data:`router`-like routers built
with :func:`console_router`. Their route class, :class:`ConsoleRoute`, sets the
request's language, sends a visitor who is not signed in to ``/login``, and
renders any :class:`~salus.errors.SalusError` as an HTML page with the right
status (the JSON APIs keep their OperationOutcome answers). A page handler gets
the signed-in :class:`~salus.security.principal.Principal` from the
``ConsoleUser`` dependency and answers with :func:`render`.

State-changing forms carry a CSRF token (double submit: a random value in the
``salus_csrf`` cookie, set at sign-in, repeated in a hidden field); the session
cookie is also ``SameSite=Strict``. Form bodies are URL-encoded and read with
:func:`read_form` (no multipart parser needed).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import select

from salus.console import i18n
from salus.console.i18n import N_
from salus.db.tables import organizations, users
from salus.errors import Forbidden, InvalidInput, NotAuthenticated, SalusError
from salus.logging import request_id_var
from salus.security.principal import Principal, PrincipalKind
from salus.server.security import SESSION_COOKIE, audit_refusal, current_principal, services_of
from salus.services import Services

__all__ = [
    "CSRF_COOKIE",
    "ConsoleRoute",
    "ConsoleUser",
    "NavItem",
    "Paging",
    "check_csrf",
    "console_router",
    "has_role",
    "nav_item",
    "read_form",
    "redirect",
    "render",
    "safe_next",
]

PACKAGE = Path(__file__).parent
CSRF_COOKIE = "salus_csrf"
MAX_FORM_BYTES = 64 * 1024


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.globals["LOCALES"] = i18n.LOCALES
    env.globals["current_locale"] = i18n.current_locale
    return env


ENV = _environment()


# -- navigation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NavItem:
    """A link in the console's main menu, shown to principals ``visible`` accepts.

    ``label`` is an English source string; it is translated when rendered.
    ``key`` is the access key (Alt+key in Chromium) announced in the link title.
    """

    path: str
    label: str
    order: int
    visible: Callable[[Principal], bool]
    key: str | None = None


NAVIGATION: list[NavItem] = []


def nav_item(item: NavItem) -> None:
    """Add a menu entry (pages call this from their ``install``)."""
    if all(existing.path != item.path for existing in NAVIGATION):
        NAVIGATION.append(item)
        NAVIGATION.sort(key=lambda entry: entry.order)


def has_role(*roles: str) -> Callable[[Principal], bool]:
    wanted = frozenset(roles)
    return lambda principal: bool(principal.roles & wanted)


def _menu(principal: Principal | None, path: str) -> list[dict[str, Any]]:
    if principal is None:
        return []
    items = []
    for item in NAVIGATION:
        if not item.visible(principal):
            continue
        current = path == item.path or (item.path != "/" and path.startswith(item.path + "/"))
        items.append(
            {
                "path": item.path,
                "label": i18n.gettext(item.label),
                "key": item.key,
                "current": current,
            }
        )
    return items


# -- paging ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paging:
    """Page ``number`` (from 1) of ``size`` rows; ``total`` when it is known.

    Built from the query string by :meth:`of`; lists render it with the
    ``pager`` macro of ``_macros.html``.
    """

    number: int
    size: int
    total: int | None = None
    base: str = ""
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, request: Request, *, size: int = 25, max_size: int = 200) -> Paging:
        def number(name: str, default: int) -> int:
            raw = request.query_params.get(name)
            try:
                return max(1, int(raw)) if raw is not None else default
            except ValueError:
                return default

        params = tuple(
            (key, value)
            for key, value in request.query_params.multi_items()
            if key not in {"page", "size"}
        )
        return cls(
            number=number("page", 1),
            size=min(number("size", size), max_size),
            base=request.url.path,
            params=params,
        )

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def with_total(self, total: int | None) -> Paging:
        return Paging(self.number, self.size, total, self.base, self.params)

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, ceil(self.total / self.size))

    def has_next(self, shown: int) -> bool:
        if self.total is not None:
            return self.number * self.size < self.total
        return shown >= self.size

    def link(self, number: int) -> str:
        query = [*self.params, ("page", str(number))]
        if self.size != 25:
            query.append(("size", str(self.size)))
        return f"{self.base}?{urlencode(query)}"


# -- requests ----------------------------------------------------------------------


async def _console_principal(request: Request) -> Principal:
    if request.headers.get("authorization") is None and SESSION_COOKIE not in request.cookies:
        raise NotAuthenticated("Sign in to use the console.")
    principal = await current_principal(request)
    if principal.kind is not PrincipalKind.USER:
        raise Forbidden("The console is for people; applications use the APIs.")
    return principal


ConsoleUser = Annotated[Principal, Depends(_console_principal)]


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form body as a dict (last value wins)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidInput("The form is too large.")
    content_type = request.headers.get("content-type", "")
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise InvalidInput("Forms must be sent as application/x-www-form-urlencoded.")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def check_csrf(request: Request, form: Mapping[str, str]) -> None:
    """Refuse a state-changing form whose token does not match the cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden("The form has expired; reload the page and try again.")


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def safe_next(value: str | None, default: str = "/") -> str:
    """A redirect target limited to this site's own paths (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def redirect(path: str, status_code: int = 303) -> RedirectResponse:
    return RedirectResponse(path, status_code=status_code)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    principal: Principal | None = None,
    title: str | None = None,
) -> HTMLResponse:
    """Render ``template`` with the page frame's context (menu, user, language,
    CSRF token, timing)."""
    started = getattr(request.state, "console_started", None)
    who = principal if principal is not None else getattr(request.state, "principal", None)
    services: Services | None = getattr(request.app.state, "services", None)
    values: dict[str, Any] = {
        "request": request,
        "principal": who,
        "user_label": _user_label(services, who),
        "menu": _menu(who, request.url.path),
        "csrf": request.cookies.get(CSRF_COOKIE, ""),
        "lang": i18n.current_locale(),
        "page_title": title,
        "path": request.url.path,
        "query": request.url.query,
        "request_id": request_id_var.get(),
    }
    if context:
        values.update(context)
    body = ENV.get_template(template).render(values)
    if started is not None:
        elapsed = (time.perf_counter() - started) * 1000
        body = body.replace("<!--render-ms-->", f"{elapsed:.0f} ms", 1)
    return HTMLResponse(body, status_code=status_code)


_LABELS: dict[str, tuple[float, str]] = {}
_LABEL_TTL = 60.0


def _user_label(services: Services | None, principal: Principal | None) -> str | None:
    """ "Display name · organization" of the signed-in person (cached a minute)."""
    if principal is None:
        return None
    key = f"{principal.id}|{principal.org_id}"
    cached = _LABELS.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < _LABEL_TTL:
        return cached[1]
    label = f"{principal.id} · {principal.org_id}"
    if services is not None:
        with services.db.read() as conn:
            person = conn.execute(
                select(users.c.display_name).where(users.c.id == principal.id)
            ).scalar_one_or_none()
            org = conn.execute(
                select(organizations.c.name).where(organizations.c.id == principal.org_id)
            ).scalar_one_or_none()
        label = f"{person or principal.id} · {org or principal.org_id}"
    if len(_LABELS) > 10_000:
        _LABELS.clear()
    _LABELS[key] = (now, label)
    return label


# -- the route class ----------------------------------------------------------------


_STATUS_TITLES = {
    400: N_("The request could not be understood"),
    401: N_("Sign-in required"),
    403: N_("Not allowed"),
    404: N_("Not found"),
    409: N_("Conflict"),
    410: N_("Gone"),
    413: N_("Too large"),
    415: N_("Unsupported format"),
    422: N_("The form has errors"),
    429: N_("Too many requests"),
    503: N_("Temporarily unavailable"),
}
_OTHER_TITLE = N_("Something went wrong")

#: Messages of errors that people meet in the console, so that they are
#: extracted for translation (an error's message is translated when shown;
#: one without a translation is shown in English).
KNOWN_MESSAGES = (
    N_("Invalid username, password or one-time code."),
    N_("A one-time code is required."),
    N_("The account is locked; try again later."),
    N_("The account is disabled."),
    N_("The organization of this account is disabled."),
    N_("Sign in to use the console."),
    N_("The console is for people; applications use the APIs."),
    N_("The form has expired; reload the page and try again."),
    N_("The form is too large."),
    # the default messages of the error classes (salus.errors)
    N_("The server is not configured correctly."),
    N_("The change conflicts with the current state."),
    N_("Access to this resource is not allowed."),
    N_("The resource has been deleted."),
    N_("The input is not valid."),
    N_("Authentication is required."),
    N_("Not found."),
    N_("This operation is not supported."),
    N_("A precondition of the request was not met."),
    N_("Too many requests; retry later."),
    N_("An internal error occurred."),
    N_("The service is temporarily unavailable."),
)


def _status_title(status: int) -> str:
    return _STATUS_TITLES.get(status, _OTHER_TITLE)


class ConsoleRoute(APIRoute):
    """Console semantics around a page handler: language, sign-in redirect and
    HTML error pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            request.state.console_started = time.perf_counter()
            i18n.use_locale(
                i18n.negotiate(
                    request.cookies.get(i18n.LANGUAGE_COOKIE),
                    request.headers.get("accept-language"),
                )
            )
            try:
                return await handler(request)
            except NotAuthenticated as exc:
                if SESSION_COOKIE in request.cookies:
                    await audit_refusal(request, exc, request.url.path)
                response: Response
                if request.method in {"GET", "HEAD"}:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    response = redirect("/login?" + urlencode({"next": target}), 303)
                else:
                    response = _error_page(request, exc)
                response.delete_cookie(SESSION_COOKIE, path="/")
                return response
            except SalusError as exc:
                if exc.http_status in {401, 403}:
                    await audit_refusal(request, exc, request.url.path)
                return _error_page(request, exc)

        return route


def _error_page(request: Request, exc: SalusError) -> HTMLResponse:
    status = exc.http_status
    response = render(
        request,
        "error.html",
        {
            "status": status,
            "heading": i18n.gettext(_status_title(status)),
            "message": i18n.gettext(exc.message),
        },
        status_code=status,
    )
    for name, value in getattr(exc, "headers", {}).items():
        if name.lower() == "retry-after":
            response.headers[name] = value
    return response


def console_router() -> APIRouter:
    """A router whose routes behave as console pages (not in the OpenAPI document)."""
    return APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def services(request: Request) -> Services:
    return services_of(request)


def table_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(row) for row in rows]


@dataclass
class FormErrors:
    """Field-level errors of a submitted form, for re-rendering it."""

    fields: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, message: str) -> None:
        self.fields[name] = message

    def __bool__(self) -> bool:
        return bool(self.fields)
