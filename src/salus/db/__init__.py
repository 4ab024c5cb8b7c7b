"""The relational index: engine, tables and migrations (SQLAlchemy 2 Core)."""

from salus.db.engine import Database, create_database
from salus.db.migrate import current_revision, head_revision, migrate

__all__ = ["Database", "create_database", "current_revision", "head_revision", "migrate"]
