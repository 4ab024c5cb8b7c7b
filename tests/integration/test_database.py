"""The database layer on SQLite and PostgreSQL: migrations, schema, modes."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from salus.db import Database, current_revision, head_revision, migrate
from salus.db.engine import normalize_url
from salus.db.schema import metadata
from salus.errors import ConfigurationError


def test_migrate_reaches_head_and_is_idempotent(empty_db: Database) -> None:
    assert current_revision(empty_db) is None
    assert migrate(empty_db) == head_revision()
    assert migrate(empty_db) == head_revision()


def test_migrated_schema_matches_table_definitions(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_concurrent_migrations_are_safe(empty_db: Database) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_db)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert current_revision(empty_db) == head_revision()


def test_write_transaction_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, payload, status, max_attempts, run_at, created_at, "
                "updated_at) VALUES ('x', '{}', 'queued', 1, :t, :t, :t)"
            ),
            {"t": "2026-01-01 00:00:00"},
        )
        raise RuntimeError("abort")
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_sqlite_runs_in_wal_with_full_sync(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("PRAGMA settings exist on SQLite only")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_check_and_dialect(db: Database) -> None:
    db.check()
    assert db.dialect in {"sqlite", "postgresql"}


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u:p@h/db", "postgresql+psycopg"),
        ("postgresql://h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_url_normalisation(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SQLite and PostgreSQL"):
        normalize_url("mysql://h/db")
    with pytest.raises(ConfigurationError, match="not a valid"):
        normalize_url("::::")
