"""Table definitions of the HL7 part (SQLAlchemy Core), on the shared MetaData."""

from __future__ import annotations

from salus.db.tables import metadata

__all__ = ["metadata"]
