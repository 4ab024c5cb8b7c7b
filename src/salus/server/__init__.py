"""The HTTP edge: one ASGI application served by uvicorn."""

from salus.server.app import create_app

__all__ = ["create_app"]
