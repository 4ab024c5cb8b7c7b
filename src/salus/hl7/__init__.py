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
    """Build the HL7 runtime (``services.hl7``); register its listener and job handler."""
    from salus.hl7.runtime import SEND_JOB, build
    from salus.services import Rewrapper

    runtime = build(services)
    services.hl7 = runtime
    services.listeners.append(runtime)
    services.job_handlers.register(SEND_JOB, runtime.run_send_job)
    services.rewrappers.append(Rewrapper("hl7 messages", runtime.store.rewrap))


def install_routes(api: FastAPI) -> None:
    """Mount this part's HTTP routes (``/api/hl7/messages``)."""
    from salus.hl7.routes import add_routes

    add_routes(api)
