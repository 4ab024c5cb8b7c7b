"""Schema migrations with Alembic, run by ``salus migrate`` and at start-up.

The Alembic environment lives in the package (``salus/db/migrations``) and
is driven from code, so no ``alembic.ini`` is needed to run it. On
PostgreSQL a transaction-scoped advisory lock keeps two starting processes
from migrating at once; on SQLite the immediate write transaction does.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from salus.db.engine import Database

__all__ = ["alembic_config", "current_revision", "head_revision", "migrate"]

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Arbitrary constant identifying Salus's migration lock.
_ADVISORY_LOCK = 0x5A1_0515


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # noqa: S101 - the package ships migrations
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(db: Database, revision: str = "head") -> str | None:
    """Upgrade the schema to ``revision``; returns the revision reached."""
    cfg = alembic_config()
    with db.write() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(db)
