"""The application factory (see :mod:`salus.server.app`)."""

from salus.server.app import SalusApp, create_app

__all__ = ["SalusApp", "create_app"]
