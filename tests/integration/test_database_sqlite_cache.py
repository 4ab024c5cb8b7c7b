"""SQLite connections keep their own page cache (SALUS_DATABASE_SQLITE_CACHE_MB):
SQLite's default of 2 MiB per connection leaves a large database's search
pages to the operating system's cache, which may reclaim them between
queries."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from salus.config import Settings
from salus.db.engine import create_database
from salus.services import Services
from salus.storage.keys import FileKeyProvider


def _cache_kib(db_url: str, cache_mb: int | None = None) -> int:
    db = (
        create_database(db_url)
        if cache_mb is None
        else create_database(db_url, sqlite_cache_mb=cache_mb)
    )
    try:
        with db.read() as conn:
            return -int(conn.execute(text("PRAGMA cache_size")).scalar_one())
    finally:
        db.dispose()


def test_each_sqlite_connection_gets_the_configured_page_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'salus.db'}"
    assert _cache_kib(url) == 64 * 1024
    assert _cache_kib(url, 256) == 256 * 1024


def test_the_server_uses_the_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_sqlite_cache_mb=8, jobs_enabled=False)
    FileKeyProvider.create(settings.key_path())
    services = Services.build(settings)
    try:
        with services.db.read() as conn:
            assert int(conn.execute(text("PRAGMA cache_size")).scalar_one()) == -8 * 1024
    finally:
        services.close()
