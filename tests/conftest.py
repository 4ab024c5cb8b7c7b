"""Shared fixtures.

Storage fixtures are parametrized so that every test touching the database
runs on SQLite and on PostgreSQL. PostgreSQL tests need
``SALUS_TEST_DATABASE_URL`` (``.ci/run`` starts a server and sets it); where
it is missing they are skipped with that reason. Each PostgreSQL test gets a
schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from salus.config import Settings
from salus.db import Database, create_database, migrate
from salus.storage.keys import FileKeyProvider

PG_ENV = "SALUS_TEST_DATABASE_URL"
PG_SKIP = (
    f"PostgreSQL not configured: set {PG_ENV} "
    "(for example postgresql://salus:salus@127.0.0.1:5432/salus_test); .ci/run does"
)


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def backend_database(backend: str, folder: Path) -> Iterator[tuple[str, str | None]]:
    """(URL, schema) of an empty database; a fresh PostgreSQL schema, dropped after."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'salus.db'}", None
        return
    url = postgres_url()
    if url is None:
        pytest.skip(PG_SKIP)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield url, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def settings_for(url: str, schema: str | None, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a data folder on the given database (schema via search_path)."""
    values: dict[str, Any] = {"data_dir": data_dir, "jobs_poll_interval": 0.05}
    if url.startswith("postgresql"):
        sep = "&" if "?" in url else "?"
        values["database_url"] = f"{url}{sep}options=-csearch_path%3D{schema}"
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str | None]]:
    """(URL, schema) of an empty database on each backend."""
    with backend_database(request.param, tmp_path) as value:
        yield value


@pytest.fixture
def empty_db(database_url: tuple[str, str | None]) -> Iterator[Database]:
    url, schema = database_url
    db = create_database(url, schema=schema)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A migrated database on each backend."""
    migrate(empty_db)
    return empty_db


@pytest.fixture
def key_provider(tmp_path: Path) -> FileKeyProvider:
    return FileKeyProvider.create(tmp_path / "keys" / "master-keys.json")


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: tuple[str, str | None]) -> Any:
    """Settings for a data folder under tmp_path on the parametrized backend."""
    url, schema = database_url

    def make(**overrides: Any) -> Settings:
        return settings_for(url, schema, tmp_path / "data", **overrides)

    return make


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint (moto in server mode) on a loopback port."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"salus-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=name)
    return name


_BACKEND_COUNTS: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.skipped):
        return
    for backend in ("sqlite", "postgresql"):
        if (
            f"[{backend}" in report.nodeid
            or f"-{backend}]" in report.nodeid
            or (f"-{backend}-" in report.nodeid)
        ):
            counts = _BACKEND_COUNTS.setdefault(backend, {"passed": 0, "failed": 0, "skipped": 0})
            counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which database backends really ran (CI must show both)."""
    if not _BACKEND_COUNTS:
        return
    terminalreporter.section("database backends")
    for backend in ("sqlite", "postgresql"):
        counts = _BACKEND_COUNTS.get(backend, {})
        terminalreporter.write_line(
            f"{backend}: {counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
            f"{counts.get('skipped', 0)} skipped"
        )
