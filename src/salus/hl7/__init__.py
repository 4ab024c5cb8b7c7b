"""HL7 v2: the MLLP listener, the durable message store, mapping to FHIR, replay and outbound feeds.

Two entry points tie this part into a Salus process: :func:`install` adds its
services, listeners and job handlers when :class:`~salus.services.Services`
is built, and :func:`install_routes` mounts the message-store API on the ASGI app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from salus.services import Services

__all__ = ["install", "install_routes"]


def install(services: Services) -> None:
    """Register this part's listeners, job handlers and re-wrappers."""


def install_routes(api: FastAPI) -> None:
    """Mount this part's HTTP routes."""
