"""Database engines for SQLite (embedded default) and PostgreSQL (psycopg 3).

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk when
it returns, so what Salus acknowledged survives a power cut. Write
transactions start with ``BEGIN IMMEDIATE`` so that two writers queue on the
busy timeout instead of failing on a lock upgrade; read transactions stay
deferred and run beside the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from salus.db.asyncfetch import AsyncKeyReader, ConnectionLost
from salus.db.walcheckpoint import WalCheckpointer
from salus.errors import ConfigurationError, Unavailable

__all__ = ["Database", "WriterLock", "create_database", "normalize_url"]

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def normalize_url(url: str) -> URL:
    """Accept ``postgres://`` and ``postgresql://`` and use psycopg 3 for them."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigurationError("SALUS_DATABASE_URL is not a valid database URL.") from None
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in {"sqlite", "sqlite+pysqlite", "postgresql+psycopg"}:
        raise ConfigurationError("Only SQLite and PostgreSQL databases are supported.")
    return parsed


#: After releasing a lock file from the loop, how long :meth:`WriterLock.held_async`
#: leaves it to other processes' waiters (it waits in a thread meanwhile).
TURN_SECONDS = 0.002


class WriterLock:
    """Mutual exclusion of SQLite writers: a re-entrant thread lock, plus an
    exclusive ``flock`` on ``path`` (when given) across processes."""

    def __init__(self, path: Path | None) -> None:
        self._thread_lock = threading.RLock()
        self._path = path
        self._fd: int | None = None
        self._depth = 0
        #: When :meth:`held_async` last released the file lock (monotonic).
        self._released_at = -1e9
        #: :meth:`held_async`'s coroutines queue per event loop (the thread lock
        #: cannot tell apart two coroutines of one loop thread); the task holding it.
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._async_owner: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0 and self._path is not None:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks without the GIL
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1

    def __exit__(self, *_: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @asynccontextmanager
    async def held_async(self) -> AsyncIterator[bool]:
        """Hold the lock from the event loop; yields False (nothing held) when
        this process holds it in a thread now (use the blocking form then).

        The ``flock`` is tried without blocking on the loop; while another
        process holds it, a worker thread waits for it. Right after this
        process released it (within :data:`TURN_SECONDS`) the thread waits
        for it too: another process's waiter, woken by that release, then
        races a thread hand-off (as it raced the writer thread before) rather
        than an immediate retry that it would nearly always lose. If
        the waiter is cancelled, the lock the thread still gets is released
        at once, so a cancelled waiter never leaves it held.

        Coroutines of one event loop take it one at a time (an
        :class:`asyncio.Lock` per loop in front of the thread lock, which the
        loop's thread would otherwise re-enter for each of them); the task
        that holds it may enter it again.
        """
        task = asyncio.current_task()
        if task is not None and task is self._async_owner:
            self._depth += 1  # re-entered by its holder
            try:
                yield True
            finally:
                self._depth -= 1
            return
        loop = asyncio.get_running_loop()
        queue = self._loop_locks.get(loop)
        if queue is None:
            queue = self._loop_locks[loop] = asyncio.Lock()
        async with queue:
            async with self._held_async_once() as held:
                if not held:  # a thread of this process holds it
                    yield False
                    return
                # Set only while this loop's thread holds the thread lock, so
                # that a task of another loop can never take it for its own.
                self._async_owner = task
                try:
                    yield True
                finally:
                    self._async_owner = None

    @asynccontextmanager
    async def _held_async_once(self) -> AsyncIterator[bool]:
        """:meth:`held_async` for the one coroutine of this loop let through."""
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            if self._depth or self._path is None:
                self._depth += 1
                try:
                    yield True
                finally:
                    self._depth -= 1
                return
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fd = self._fd
            try:
                if time.monotonic() - self._released_at < TURN_SECONDS:
                    raise BlockingIOError  # the other process's turn first
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    waiting.add_done_callback(lambda f: _unlock_if_locked(f, fd))
                    raise
            self._depth = 1
            try:
                yield True
            finally:
                self._depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
                self._released_at = time.monotonic()
        finally:
            self._thread_lock.release()


def _unlock_if_locked(waiting: asyncio.Future[None], fd: int) -> None:
    if not waiting.cancelled() and waiting.exception() is None:
        fcntl.flock(fd, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class _KeyQuery:
    """A SELECT compiled once for one dialect (see :meth:`Database.fetch_one`)."""

    sql: str
    #: Parameter names in placeholder order (positional paramstyles), else None.
    order: tuple[str, ...] | None
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: Values of the statement's own (literal) parameters.
    constants: dict[str, Any]
    results: tuple[Callable[[Any], Any] | None, ...]


def _compile_key_query(engine: Engine, statement: Select[Any]) -> _KeyQuery | None:
    """Compile ``statement`` for ``engine``'s dialect, or None when it cannot be
    run as a fixed SQL text (expanding ``IN`` lists, literal rendering)."""
    dialect = engine.dialect
    compiled: Any = statement.compile(dialect=dialect)
    if any(b.expanding or b.literal_execute for b in compiled.binds.values()):
        return None
    binds = []
    constants = {
        name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
    }
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            binds.append((name, processor))
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )
    order = tuple(compiled.positiontup) if compiled.positional else None
    return _KeyQuery(compiled.string, order, tuple(binds), constants, results)


def _key_args(query: _KeyQuery, params: Mapping[str, Any]) -> Any:
    """The driver parameters of ``query`` (bind processors applied)."""
    values = {**query.constants, **params}
    for name, processor in query.binds:
        values[name] = processor(values[name])
    return values if query.order is None else tuple(values[n] for n in query.order)


def _key_row(query: _KeyQuery, names: list[str], row: Any) -> dict[str, Any]:
    """A driver row as ``Connection.execute`` gives it (result processors applied)."""
    return {
        name: (processor(value) if processor is not None else value)
        for name, value, processor in zip(names, row, query.results, strict=True)
    }


#: Each SQLite connection's page cache in MiB (``SALUS_DATABASE_SQLITE_CACHE_MB``).
DEFAULT_SQLITE_CACHE_MB = 64

#: Rows SQLite's ANALYZE samples per index (``PRAGMA analysis_limit``).
ANALYSIS_LIMIT = 1000

#: SQLite's own automatic checkpoint threshold in pages (``wal_autocheckpoint``),
#: kept where no :class:`WalCheckpointer` runs (the CLI, tests).
SQLITE_AUTOCHECKPOINT_PAGES = 1000

#: The WAL's bound in MiB (``SALUS_DATABASE_SQLITE_WAL_LIMIT_MB``): a reset WAL
#: file is truncated to it (``journal_size_limit``), and the checkpointer empties
#: a WAL holding more (ADR 23).
DEFAULT_SQLITE_WAL_LIMIT_MB = 64

#: Under load the checkpointer restarts a WAL of this many MiB once it has
#: caught up (``SALUS_DATABASE_SQLITE_WAL_RESTART_MB``; 0, the default: only
#: at the bound; ADR 23, stop-17 amendment: the restart measured no gain).
DEFAULT_SQLITE_WAL_RESTART_MB = 0


class Database:
    """One engine plus the transaction helpers the services use."""

    def __init__(
        self,
        engine: Engine,
        schema: str | None = None,
        *,
        connect_args: Mapping[str, Any] | None = None,
        sqlite_wal_limit_mb: int = DEFAULT_SQLITE_WAL_LIMIT_MB,
        sqlite_wal_restart_mb: int = DEFAULT_SQLITE_WAL_RESTART_MB,
    ) -> None:
        self.engine = engine
        self.schema = schema
        #: SQLite: the WAL bound, and the automatic checkpoint threshold new
        #: connections get (0 while a :class:`WalCheckpointer` runs).
        self.sqlite_wal_limit_mb = sqlite_wal_limit_mb
        self.sqlite_wal_restart_mb = sqlite_wal_restart_mb
        self._autocheckpoint = SQLITE_AUTOCHECKPOINT_PAGES
        self._checkpointer: WalCheckpointer | None = None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", self._on_sqlite_connect)
        # SQLite has one writer at a time. Writers queue on a lock (woken as
        # soon as the writer before them commits) rather than on SQLite's busy
        # handler, which sleeps in growing steps of up to 100 ms and collapses
        # throughput under concurrent writes: a thread lock within the process
        # and, for a database file, an flock beside it across the processes
        # of one server (SALUS_HTTP_WORKERS) and the CLI.
        self._writer: WriterLock | None = None
        if engine.dialect.name == "sqlite":
            database = engine.url.database or ""
            self._writer = WriterLock(
                None if database in ("", ":memory:") else Path(database + ".writer-lock")
            )
        #: Statements of :meth:`fetch_one`, compiled once (by statement identity).
        self._key_queries: dict[int, tuple[Select[Any], _KeyQuery | None]] = {}
        #: The connections of :meth:`fetch_one_async` (PostgreSQL; made on first use).
        self._async_reader: AsyncKeyReader | None = None
        #: The engine's own ``connect_args`` (schema, timeouts), for those connections.
        self._connect_args: dict[str, Any] = dict(connect_args or {})

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file (None: PostgreSQL or an in-memory database)."""
        database = (self.engine.url.database or "") if self.is_sqlite else ""
        return None if database in ("", ":memory:") else Path(database)

    def _on_sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA wal_autocheckpoint={int(self._autocheckpoint)}")
        cur.execute(f"PRAGMA journal_size_limit={int(self.sqlite_wal_limit_mb) * 1024 * 1024}")
        cur.close()

    @property
    def checkpointer(self) -> WalCheckpointer | None:
        """The running WAL checkpointer (:meth:`start_checkpointer`), if any."""
        return self._checkpointer

    def start_checkpointer(self, interval: float) -> WalCheckpointer | None:
        """Checkpoint the SQLite WAL from a background thread every ``interval``
        seconds instead of inside the commits (ADR 23): connections opened from
        now on have SQLite's automatic checkpoint off (the pool is replaced;
        connections checked out now are closed on return). None (nothing
        started) on PostgreSQL and for an in-memory database."""
        if self._checkpointer is not None or self.sqlite_path is None:
            return self._checkpointer
        with self.engine.connect() as conn:
            page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        limit_pages = max(1, self.sqlite_wal_limit_mb * 1024 * 1024 // page_size)
        restart_pages = self.sqlite_wal_restart_mb * 1024 * 1024 // page_size
        checkpointer = WalCheckpointer(
            self, interval=interval, limit_pages=limit_pages, restart_pages=restart_pages
        )
        self._autocheckpoint = 0
        self.engine.dispose()
        checkpointer.start()
        self._checkpointer = checkpointer
        return checkpointer

    def stop_checkpointer(self) -> None:
        """Stop the checkpointer; new connections checkpoint automatically again."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is None:
            return
        checkpointer.stop()
        self._autocheckpoint = SQLITE_AUTOCHECKPOINT_PAGES
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block exits cleanly."""
        if self._writer is not None:
            with self._writer, self._write() as conn:
                yield conn
        else:
            with self._write() as conn:
                yield conn

    def writer_lock(self) -> AbstractContextManager[object]:
        """SQLite's writer lock (what :meth:`write` holds; re-entrant) without a
        transaction, for a writer that decides what to write once it may (the
        audit group commit). A no-op on PostgreSQL."""
        return self._writer if self._writer is not None else nullcontext()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(salus_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot on both backends)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read_once(self) -> Iterator[Connection]:
        """A connection for one read statement: on PostgreSQL in autocommit mode
        (a single statement sees one snapshot; no BEGIN and COMMIT round trips),
        on SQLite a read transaction as :meth:`read` gives."""
        if self.is_sqlite:
            with self.read() as conn:
                yield conn
        else:
            with self.engine.connect() as conn:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def fetch_one(self, statement: Select[Any], params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row of a one-statement read (a lookup by key), or None.

        The statement is compiled once per ``statement`` object (keep it:
        build it once per shape) and run on the pooled DBAPI connection
        directly, in autocommit mode on both backends: one statement sees one
        snapshot, so no BEGIN/ROLLBACK (SQLite) or transaction round trips
        (PostgreSQL), and none of SQLAlchemy's per-call connection, execution
        context and result objects, which cost ten times the lookup (ADR 11).
        Bind and result values go through the column types' processors as
        with :meth:`Connection.execute`. Driver errors are raised as
        SQLAlchemy's (parameters hidden); a lost connection is invalidated and
        the pool replaced (``Engine.dispose``: connections checked out now are
        closed on return), as SQLAlchemy's own invalidation of the pool does.
        Statements with expanding ``IN`` lists fall back to :meth:`read_once`.
        """
        query = self._key_query(statement)
        if query is None:
            with self.read_once() as conn:
                row = conn.execute(statement, dict(params)).mappings().first()
                return dict(row) if row is not None else None
        found = self.fetch_raw(query.sql, _key_args(query, params))
        if found is None:
            return None
        names, values = found
        return _key_row(query, names, values)

    def fetch_raw(
        self,
        sql: str,
        args: Any,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        label: str | None = None,
    ) -> tuple[list[str], tuple[Any, ...]] | None:
        """One statement of driver SQL alone on the pooled DBAPI connection, in
        autocommit on PostgreSQL (committed, ``synchronous_commit`` on, when
        it returns): its column names and first row, or None. The one place
        that runs such statements (:meth:`fetch_one`, the audit's group
        append, the PostgreSQL create group), :meth:`fetch_raw_async` its
        twin on the event loop.

        ``on_error`` sees a driver error first and may raise a more specific
        one. Otherwise driver errors are raised as SQLAlchemy's with the
        parameters hidden (the statement named by ``label``, default ``sql``);
        a lost connection is invalidated and the pool replaced
        (``Engine.dispose``: connections checked out now are closed on
        return), as SQLAlchemy's own invalidation of the pool does.
        """
        engine = self.engine
        dbapi_error = engine.dialect.loaded_dbapi.Error
        fairy = engine.raw_connection()
        try:
            driver: Any = fairy.driver_connection
            postgres = not self.is_sqlite
            if postgres:
                driver.autocommit = True
            try:
                cursor = fairy.cursor()
                try:
                    cursor.execute(sql, args)
                    row = cursor.fetchone()
                    names = [d[0] for d in cursor.description] if row is not None else []
                finally:
                    cursor.close()
            finally:
                if postgres and not driver.closed:
                    driver.autocommit = False
        except dbapi_error as exc:
            if on_error is not None:
                on_error(exc)
            lost = engine.dialect.is_disconnect(exc, fairy.dbapi_connection, None)
            if lost:  # as SQLAlchemy does on a disconnect, with public calls:
                fairy.invalidate(exc)  # this one is closed, not returned to the pool,
                engine.dispose()  # and the others (opened before the loss) go too
            raise DBAPIError.instance(
                label or sql,
                None,
                exc,
                dbapi_error,
                hide_parameters=True,
                connection_invalidated=lost,
                dialect=engine.dialect,
            ) from exc
        finally:
            fairy.close()
        return None if row is None else (names, row)

    def _key_query(self, statement: Select[Any]) -> _KeyQuery | None:
        entry = self._key_queries.get(id(statement))
        if entry is None or entry[0] is not statement:
            entry = (statement, _compile_key_query(self.engine, statement))
            self._key_queries[id(statement)] = entry
        return entry[1]

    async def fetch_one_async(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """:meth:`fetch_one` for the event loop (ADR 11, stop-15 amendment).

        On PostgreSQL the statement runs on an autocommit
        :class:`psycopg.AsyncConnection` of a small per-process pool
        (:mod:`salus.db.asyncfetch`): no thread hand-off, and the loop serves
        other requests during the round trip. Same SQL text, bind and result
        processors and error wrapping as :meth:`fetch_one`; a lost connection
        is flagged (``connection_invalidated``, answered 503) and the pools
        replaced. On SQLite (a local file) and for statements that
        :meth:`fetch_one` cannot run as a fixed text, :meth:`fetch_one` runs
        on the loop or in a worker thread respectively.
        """
        if self.is_sqlite:
            return self.fetch_one(statement, params)
        query = self._key_query(statement)
        if query is None:
            return await asyncio.to_thread(self.fetch_one, statement, params)
        found = await self.fetch_raw_async(query.sql, _key_args(query, params))
        if found is None:
            return None
        return _key_row(query, *found)

    async def fetch_raw_async(
        self, sql: str, args: Any
    ) -> tuple[list[str], tuple[Any, ...]] | None:
        """One statement of driver SQL (PostgreSQL) on the async connections
        of :meth:`fetch_one_async`, in autocommit (committed when it returns):
        its column names and first row, or None. Errors as :meth:`fetch_one`'s."""
        reader = self._async_reader
        if reader is None:
            reader = self._async_reader = self._make_async_reader()
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            return await reader.fetch(sql, args)
        except (dbapi_error, ConnectionLost) as exc:
            lost = isinstance(exc, ConnectionLost)
            orig = exc.__cause__ if lost else exc
            if lost:
                self.engine.dispose()  # the engine's connections were opened before it too
            raise DBAPIError.instance(
                sql,
                None,
                orig if isinstance(orig, Exception) else exc,
                dbapi_error,
                hide_parameters=True,
                connection_invalidated=lost,
                dialect=self.engine.dialect,
            ) from orig

    def _make_async_reader(self) -> AsyncKeyReader:
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        params: dict[str, Any] = {**cparams, **self._connect_args}
        if cargs:
            params.setdefault("conninfo", cargs[0])
        size = int(getattr(self.engine.pool, "size", lambda: 5)())
        return AsyncKeyReader(self.engine, params, max(1, size))

    async def aclose(self) -> None:
        """Close the connections of :meth:`fetch_one_async` (server shutdown)."""
        reader, self._async_reader = self._async_reader, None
        if reader is not None:
            await reader.aclose()

    def analyze(self) -> bool:
        """Refresh SQLite's query planner statistics (``sqlite_stat1``).

        Without them SQLite plans a search from the resource table and its
        type index rather than from the search index's value, which costs
        hundreds of milliseconds at a million resources instead of one. The
        sampling limit keeps it to tens of milliseconds on any size. Every
        connection opened afterwards plans with the new statistics. Returns
        False on PostgreSQL, whose autovacuum keeps its statistics itself.
        """
        if not self.is_sqlite:
            return False
        with self.write() as conn:
            conn.exec_driver_sql(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
            conn.exec_driver_sql("ANALYZE")
        # A SQLite connection loads the statistics when it opens and keeps
        # them: the pooled connections would go on planning with the old ones.
        # Replace the pool; connections checked out now are closed on return.
        self.engine.dispose()
        return True

    def check(self) -> None:
        """Raise :class:`Unavailable` if the database cannot answer."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            raise Unavailable("The database is not reachable.") from None

    def dispose(self) -> None:
        self.stop_checkpointer()
        self.engine.dispose()
        reader, self._async_reader = self._async_reader, None
        if reader is not None:
            reader.close()
        if self._writer is not None:
            self._writer.close()


def _sqlite_engine(url: URL, echo: bool, cache_mb: int = DEFAULT_SQLITE_CACHE_MB) -> Engine:
    database = url.database or ""
    if database and database != ":memory:":
        path = Path(database)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # The index holds identifiers: owner-only, like the key file. SQLite
            # gives its -wal and -shm files the database file's permissions.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=8,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event emit BEGIN itself (pysqlite's implicit
        # transactions would defeat BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # The connection's own page cache (SQLite's default is 2 MiB): the
        # pages a search walks stay in the process, where the operating
        # system cannot reclaim them between queries (docs/configuration.md).
        cur.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("salus_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _postgres_connect_args(schema: str | None) -> dict[str, Any]:
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if schema is not None:
        connect_args["options"] = f"-csearch_path={schema}"
    return connect_args


def _postgres_engine(url: URL, pool_size: int, schema: str | None, echo: bool) -> Engine:
    connect_args = _postgres_connect_args(schema)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping before each checkout (a round trip on every transaction):
        # a connection found dead is invalidated with the whole pool, and that
        # request is answered 503 (server.errors); the next ones reconnect.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    return engine


def create_database(
    url: str,
    *,
    pool_size: int = 10,
    schema: str | None = None,
    echo: bool = False,
    sqlite_cache_mb: int = DEFAULT_SQLITE_CACHE_MB,
    sqlite_wal_limit_mb: int = DEFAULT_SQLITE_WAL_LIMIT_MB,
    sqlite_wal_restart_mb: int = DEFAULT_SQLITE_WAL_RESTART_MB,
) -> Database:
    """Build a :class:`Database`; ``schema`` (PostgreSQL only) isolates tests;
    ``sqlite_cache_mb``: each SQLite connection's page cache;
    ``sqlite_wal_limit_mb``: the WAL's bound, ``sqlite_wal_restart_mb``: the
    size from which it is restarted under load (ADR 23)."""
    parsed = normalize_url(url)
    if parsed.drivername.startswith("sqlite"):
        return Database(
            _sqlite_engine(parsed, echo, sqlite_cache_mb),
            sqlite_wal_limit_mb=sqlite_wal_limit_mb,
            sqlite_wal_restart_mb=sqlite_wal_restart_mb,
        )
    if schema is not None and not _SCHEMA.match(schema):
        raise ConfigurationError("Invalid PostgreSQL schema name.")
    return Database(
        _postgres_engine(parsed, pool_size, schema, echo),
        schema,
        connect_args=_postgres_connect_args(schema),
    )
