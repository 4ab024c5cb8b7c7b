"""Salus: a secure health data hub for networks of hospitals."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
