"""The web console: server-rendered pages at ``/`` for the people who use Salus.

Pages are Jinja2 templates rendered on the server (no single-page framework,
no CDN: every asset is served from ``/static/console``), with a little
JavaScript for what needs it (the image viewer, keyboard shortcuts). Strings
are English and translatable (``i18n``: Vietnamese and French catalogs
included). Each page reads through the same services as the APIs, with the
signed-in person's :class:`~salus.security.principal.Principal`, so the access
policy and the audit trail apply to the console exactly as to the APIs.
"""

from __future__ import annotations

from importlib import import_module

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from salus.console.web import PACKAGE

__all__ = ["PAGE_MODULES", "install_routes"]

#: Page modules under ``salus.console.pages``, installed in this order.
PAGE_MODULES: list[str] = [
    "home",
    "inbox",
    "audit",
    "admin",
    "dashboards",
    "patients",
    "breakglass",
    "viewer",
]


def install_routes(api: FastAPI) -> None:
    api.mount("/static/console", StaticFiles(directory=PACKAGE / "static"), name="console-static")
    for name in PAGE_MODULES:
        import_module(f"salus.console.pages.{name}").install(api)
