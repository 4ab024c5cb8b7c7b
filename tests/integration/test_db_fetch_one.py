"""``Database.fetch_one``: one read statement on the DBAPI connection, with the
same values as ``Connection.execute`` gives, on SQLite and PostgreSQL (ADR 11)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    literal,
    select,
)
from sqlalchemy.exc import DBAPIError

from salus.db import Database
from salus.db.types import UTCDateTime

_META = MetaData()
_ROWS = Table(
    "fetch_one_rows",
    _META,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("gone", Boolean, nullable=False),
    Column("body", LargeBinary, nullable=True),
)
#: A required parameter, a typed one (bind processor) and a literal of the statement's own.
_BY_NAME = select(_ROWS).where(
    _ROWS.c.name == bindparam("name"),
    _ROWS.c.at >= bindparam("since", type_=UTCDateTime()),
    _ROWS.c.gone == literal(False),
)
_IN_LIST = select(_ROWS).where(_ROWS.c.name.in_(bindparam("names", expanding=True)))
_AT = datetime(2026, 11, 23, 13, 45, 1, 250000, tzinfo=UTC)


@pytest.fixture
def rows(db: Database) -> Database:
    _META.create_all(db.engine)
    with db.write() as conn:
        conn.execute(
            insert(_ROWS),
            [
                {"id": 1, "name": "a", "at": _AT, "gone": False, "body": b'\x00{"x":1}'},
                {"id": 2, "name": "b", "at": _AT, "gone": True, "body": None},
            ],
        )
    return db


def test_same_values_as_execute(rows: Database) -> None:
    params = {"name": "a", "since": datetime(2026, 1, 1, tzinfo=UTC)}
    with rows.read() as conn:
        expected = dict(conn.execute(_BY_NAME, params).mappings().one())
    got = rows.fetch_one(_BY_NAME, params)
    assert got == expected
    assert got is not None
    assert got["at"] == _AT and got["at"].tzinfo is not None  # through UTCDateTime
    assert got["gone"] is False and bytes(got["body"]) == b'\x00{"x":1}'
    # The typed parameter is processed too: a later bound excludes the row.
    assert (
        rows.fetch_one(_BY_NAME, {"name": "a", "since": datetime(2027, 1, 1, tzinfo=UTC)}) is None
    )
    assert rows.fetch_one(_BY_NAME, {"name": "b", "since": params["since"]}) is None  # literal
    assert rows.fetch_one(_BY_NAME, {"name": "zz", "since": params["since"]}) is None


def test_expanding_lists_fall_back(rows: Database) -> None:
    got = rows.fetch_one(_IN_LIST, {"names": ["x", "b"]})
    assert got is not None and got["id"] == 2 and got["body"] is None


def test_driver_errors_are_wrapped_and_the_connection_stays_usable(rows: Database) -> None:
    missing = Table("fetch_one_missing", MetaData(), Column("id", Integer, primary_key=True))
    statement = select(missing).where(missing.c.id == bindparam("id"))
    with pytest.raises(DBAPIError) as caught:
        rows.fetch_one(statement, {"id": 12345})
    assert caught.value.hide_parameters and "12345" not in str(caught.value)
    # Every pooled connection still works, in transactions that roll back (on
    # PostgreSQL the connection was switched to autocommit for the statement
    # and must be switched back).
    for _ in range(3):
        with pytest.raises(RuntimeError), rows.write() as conn:
            conn.execute(insert(_ROWS), {"id": 3, "name": "c", "at": _AT, "gone": False})
            assert rows.fetch_one(_BY_NAME, {"name": "a", "since": _AT}) is not None
            raise RuntimeError("roll back")
    params = {"name": "c", "since": _AT}
    assert rows.fetch_one(_BY_NAME, params) is None
    with rows.read() as conn:
        assert conn.execute(_BY_NAME, params).first() is None


def test_a_broken_pooled_connection_is_replaced(rows: Database) -> None:
    """A pooled connection that died (PostgreSQL: its backend terminated; SQLite:
    closed under the pool) fails the one call that finds it, flagged as a lost
    connection, and the pool is replaced: the next calls get new connections,
    also when more than one pooled connection was dead (ADR 11)."""
    engine = rows.engine
    params = {"name": "a", "since": _AT}
    assert rows.fetch_one(_BY_NAME, params) is not None
    held = [engine.raw_connection() for _ in range(max(2, engine.pool.checkedin()))]  # type: ignore[attr-defined]
    drivers = [h.driver_connection for h in held]
    if not rows.is_sqlite:  # from a connection of its own, outside the pool
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as killer:
            for driver in drivers:
                pid = driver.info.backend_pid  # type: ignore[union-attr]
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for h in held:
        h.close()  # back into the pool, which does not know they are dead
    if rows.is_sqlite:
        for driver in drivers:
            driver.close()  # type: ignore[union-attr]
    with pytest.raises(DBAPIError) as caught:
        rows.fetch_one(_BY_NAME, params)
    assert caught.value.connection_invalidated
    for _ in range(len(held) + 1):  # none of the other dead connections is handed out
        assert rows.fetch_one(_BY_NAME, params) is not None
    with rows.read() as conn:
        assert conn.execute(_BY_NAME, params).first() is not None


# -- fetch_one_async (ADR 11, stop-15 amendment) ------------------------------------------


def test_async_gives_the_same_values_on_connections_of_its_own(rows: Database) -> None:
    """On the loop: the same rows as ``fetch_one``; on PostgreSQL from the async
    connections (reused, the engine's pool untouched), on SQLite from the engine."""
    params = {"name": "a", "since": datetime(2026, 1, 1, tzinfo=UTC)}
    expected = rows.fetch_one(_BY_NAME, params)
    checked_out_before = rows.engine.pool.checkedout()  # type: ignore[attr-defined]

    async def run() -> list[dict[str, Any] | None]:
        got = [await rows.fetch_one_async(_BY_NAME, params) for _ in range(3)]
        got.append(await rows.fetch_one_async(_BY_NAME, {**params, "name": "b"}))  # literal
        got.append(await rows.fetch_one_async(_IN_LIST, {"names": ["b"]}))  # falls back
        await rows.aclose()
        return got

    got = asyncio.run(run())
    assert got[:3] == [expected] * 3 and got[3] is None
    assert got[4] is not None and got[4]["id"] == 2
    assert got[0] is not None and got[0]["at"] == _AT and got[0]["at"].tzinfo is not None
    assert rows.engine.pool.checkedout() == checked_out_before  # type: ignore[attr-defined]
    reader = rows._async_reader
    assert reader is None  # closed by aclose
    if not rows.is_sqlite:
        # A second loop (a restarted server) opens connections of its own.
        async def again() -> tuple[dict[str, Any] | None, int]:
            row = await rows.fetch_one_async(_BY_NAME, params)
            assert rows._async_reader is not None
            opened = rows._async_reader.opened
            await rows.aclose()
            return row, opened

        assert asyncio.run(again()) == (expected, 1)


def test_async_errors_are_wrapped_and_the_connection_stays_usable(rows: Database) -> None:
    missing = Table("fetch_one_missing", MetaData(), Column("id", Integer, primary_key=True))
    statement = select(missing).where(missing.c.id == bindparam("id"))
    params = {"name": "a", "since": _AT}

    async def run() -> int:
        for _ in range(3):
            with pytest.raises(DBAPIError) as caught:
                await rows.fetch_one_async(statement, {"id": 12345})
            assert caught.value.hide_parameters and "12345" not in str(caught.value)
            assert not caught.value.connection_invalidated
            assert await rows.fetch_one_async(_BY_NAME, params) is not None
        opened = 0 if rows._async_reader is None else rows._async_reader.opened
        await rows.aclose()
        return opened

    opened = asyncio.run(run())
    assert opened == (0 if rows.is_sqlite else 1)  # one connection, never replaced


@pytest.mark.postgres
def test_async_lost_connections_are_flagged_and_replaced(rows: Database) -> None:
    """Async connections whose backends died fail the one read that finds them,
    flagged as lost (answered 503), and every idle one is dropped with it: the
    next reads open new connections and succeed."""
    if rows.is_sqlite:
        pytest.skip("async connections are PostgreSQL's; SQLite reads a local file")
    params = {"name": "a", "since": _AT}
    url = rows.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def run() -> None:
        # Three concurrent reads: three connections, then idle in the pool.
        found = await asyncio.gather(*(rows.fetch_one_async(_BY_NAME, params) for _ in range(3)))
        assert all(row is not None for row in found)
        reader = rows._async_reader
        assert reader is not None and reader.opened == 3
        pids = [conn.info.backend_pid for conn in reader._idle]
        with psycopg.connect(url, autocommit=True) as killer:
            for pid in pids:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await asyncio.sleep(0.05)
        with pytest.raises(DBAPIError) as caught:
            await rows.fetch_one_async(_BY_NAME, params)
        assert caught.value.connection_invalidated
        for _ in range(3):  # none of the other dead connections is handed out
            assert await rows.fetch_one_async(_BY_NAME, params) is not None
        assert reader.opened == 4
        await rows.aclose()

    asyncio.run(run())


@pytest.mark.postgres
def test_async_connections_in_use_are_closed_after_aclose(rows: Database) -> None:
    """Shutting down (``aclose``) while a read is in flight: that read completes,
    and its connection is closed on return instead of going back to the pool."""
    if rows.is_sqlite:
        pytest.skip("async connections are PostgreSQL's; SQLite reads a local file")

    async def run() -> tuple[Any, int, bool]:
        task = asyncio.create_task(rows.fetch_raw_async("SELECT 7 FROM pg_sleep(0.2)", None))
        await asyncio.sleep(0.05)
        reader = rows._async_reader
        assert reader is not None
        await rows.aclose()
        found = await task
        return found, len(reader._idle), rows._async_reader is None

    found, idle, dropped = asyncio.run(run())
    assert found is not None and found[1] == (7,)
    assert idle == 0 and dropped
