"""Reads by key on PostgreSQL without a thread hand-off (ADR 11, stop-15 amendment).

A read by id on PostgreSQL is one statement and one network round trip. Run
in the thread pool (``asyncio.to_thread``), the hand-off and the future
callbacks that wake the event loop cost more CPU than the statement (27 % of
a worker's samples under load); run blocking on the loop, the loop stalls for
the round trip. Here it runs on a psycopg 3 :class:`~psycopg.AsyncConnection`
in autocommit mode: the loop sends the statement, serves other requests while
PostgreSQL answers, and resumes the read when the socket is readable.

The connections are a small pool per process and event loop, opened on
demand up to the engine's pool size, with the same connection arguments and
type adapters as the engine's (``create_connect_args``: the URL, the
schema's ``search_path``, SQLAlchemy's adapters map). They are used for one
statement at a time only, in autocommit: no transaction is ever left open.
A connection that fails (lost server, cancelled read) is closed, not
returned; a lost one also closes the idle ones (opened before the loss), as
:meth:`Database.fetch_one` replaces the engine's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

__all__ = ["AsyncKeyReader", "ConnectionLost"]


class ConnectionLost(Exception):
    """The read's connection was lost (the driver's error is ``__cause__``)."""


class AsyncKeyReader:
    """A few autocommit :class:`psycopg.AsyncConnection` objects for one-statement reads."""

    def __init__(self, engine: Engine, connect_params: dict[str, Any], size: int) -> None:
        if size < 1:
            raise ValueError("size must be positive")
        self._engine = engine
        self._params = connect_params
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: asyncio.Semaphore | None = None
        #: Connections opened (for tests).
        self.opened = 0
        #: Set by :meth:`aclose`/:meth:`close`: connections in use are closed on return.
        self._closed = False

    def _bind(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            # A new event loop (tests, a restarted server): the connections of
            # the old one cannot be awaited from here; close their sockets.
            self._close_idle()
            self._loop = loop
            self._slots = asyncio.Semaphore(self.size)
        return self._slots

    async def fetch(self, sql: str, args: Any) -> tuple[list[str], tuple[Any, ...]] | None:
        """Run ``sql`` (a one-row SELECT); its column names and first row, or None.

        Driver errors propagate as psycopg's (the caller wraps them), or as
        :class:`ConnectionLost` from psycopg's when the connection broke; a
        connection is returned to the pool only if it is still usable.
        """
        slots = self._bind()
        async with slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            ok = False
            try:
                cursor = conn.cursor()
                try:
                    await cursor.execute(sql, args)
                    row = await cursor.fetchone()
                    names = [d.name for d in cursor.description or ()] if row is not None else []
                finally:
                    await cursor.close()
                ok = True
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._close_idle()  # opened before the loss: likely dead too
                    raise ConnectionLost() from exc
                ok = True  # a statement error; autocommit left nothing open
                raise
            finally:
                if ok and not conn.closed and not self._closed:
                    self._idle.append(conn)
                else:  # lost, or cancelled mid-statement (state unknown): close it
                    _close(conn)
        return None if row is None else (names, row)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **self._params)
        self.opened += 1
        return conn

    def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    async def aclose(self) -> None:
        """Close the idle connections (those in use are closed on return)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()

    def close(self) -> None:
        """:meth:`aclose` without a loop (closes the sockets)."""
        self._closed = True
        self._close_idle()


def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection's socket without awaiting (no round trip needed)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()
