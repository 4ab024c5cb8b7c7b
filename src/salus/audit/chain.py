"""The tamper-evident audit trail: an append-only hash chain in the database.

Every event gets the next ``seq`` (1, 2, 3… without gaps) and
``hash = SHA-256(prev_hash ‖ canonical event)`` (exact form:
:func:`salus.audit.events.event_hash`), so changing, removing or reordering
a stored event breaks the chain at that event. ``seq`` is assigned under the
lock of the one ``audit_head`` row, and the head is updated in the same
transaction as the events: on SQLite here, in Python (the write transaction,
``BEGIN IMMEDIATE``, is already exclusive); on PostgreSQL by the function
``salus_audit_append`` (migration 0015, one statement), always: a database
without it is refused as not migrated, there is no second implementation
to fall back on (ADR 21).

:meth:`AuditLog.append` runs inside the caller's write transaction, so an
event commits or rolls back with the change it records. Events with no
enclosing change (reads, refused requests, logins) go through
:meth:`AuditLog.record`, or from async code :meth:`AuditLog.record_async`,
which groups concurrent events into one transaction (group commit) and
returns only once its event is durable.

Deleting the newest events and moving the head back leaves a valid, shorter
chain. Signed checkpoints (:meth:`AuditLog.checkpoint`) detect that: each
states (seq, hash) of the head at a time, is stored in ``audit_checkpoints``
*and* appended to a file outside the database (``checkpoint_file``), which is
what detects the truncation of both events and checkpoint rows. Ship that
file off the host (or to write-once storage) to protect it in turn.
IHE ITI TF-2 ATNA (Record Audit Event) and FHIR R4 ``auditevent.html``
describe what is audited; :mod:`salus.audit.verify` checks all of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from salus.audit.batcher import RecordBatcher
from salus.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    iso_utc,
)
from salus.audit.pgappend import (
    _PG_JSON_PARTS,
    PG_RECORD,
    _pg_json_parts,
    pg_json_events,
    pg_record_params,
    raise_pg_error,
)
from salus.audit.signing import Checkpoint, CheckpointSigner, Ed25519Signer
from salus.audit.sqliteappend import (
    PreparedEvents,
    append_prepared,
    prepare_events,
    write_chained,
)
from salus.db.engine import Database, WriterLock
from salus.db.tables import audit_checkpoints, audit_events, audit_head
from salus.db.types import utcnow
from salus.errors import IntegrityError, InvalidInput, Unavailable

__all__ = [
    "AuditLog",
    "ChainHead",
    "Checkpoint",
    "CheckpointSigner",
    "Ed25519Signer",
    "append_checkpoint_line",
]

log = logging.getLogger("salus.audit")

HEAD_ID = 1


class ChainHead(NamedTuple):
    seq: int
    hash: str


# The head locked by every SQLite append, built once.
_LOCK_HEAD = (
    select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID).with_for_update()
)


class _RawStatement:
    """A statement compiled once for SQLite's DBAPI (``qmark``), with the bind
    processors of its column types (the values ``Connection.execute`` sends)."""

    def __init__(self, statement: Any, dialect: Any, column_keys: list[str] | None = None) -> None:
        compiled: Any = statement.compile(dialect=dialect, column_keys=column_keys)
        self.sql: str = compiled.string
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.constants = {
            n: b.effective_value for n, b in compiled.binds.items() if b.value is not None
        }
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name in self.order:
            value = values[name] if name in values else self.constants[name]
            processor = self.processors.get(name)
            out.append(processor(value) if processor is not None else value)
        return tuple(out)


def _check_events(events: Sequence[object]) -> None:
    """Refuse anything but :class:`AuditEvent` before it reaches the chain."""
    if any(not isinstance(event, AuditEvent) for event in events):
        raise InvalidInput("Only AuditEvent objects can be appended to the audit trail.")


class AuditLog:
    """Append events to the chain, record them (also in groups), sign checkpoints."""

    def __init__(
        self,
        db: Database,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_file: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch_max: int = 256,
        batch_delay: float = 0.0,
        append_lock: Path | None = None,
    ) -> None:
        """``append_lock``: a file the group commits of the processes of one
        server lock in turn on PostgreSQL (SQLite's writer lock plays that
        part there): a batch is taken once the other worker's append has
        committed, so the events queued meanwhile join it (their appends queue
        on the chain head row anyway). Without it each process's batches queue
        inside PostgreSQL, holding only the events of their start."""
        self.db = db
        self.signer = signer
        self.checkpoint_file = checkpoint_file
        self.clock = clock
        self.batch_max = batch_max
        self.batch_delay = batch_delay
        self._batcher: RecordBatcher | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._sqlite_head: _RawStatement | None = None  # _LOCK_HEAD, compiled once
        self._append_lock_path = None if db.is_sqlite else append_lock
        self._append_lock: WriterLock | None = None  # made by start(): servers only

    # -- appending -------------------------------------------------------------------
    def append(self, conn: Connection, events: Sequence[AuditEvent]) -> list[int]:
        """Append ``events`` inside the caller's write transaction; return their seqs.

        The head row stays locked until the caller's transaction ends, so
        keep the rest of that transaction short. If the chain head is
        inconsistent (:class:`IntegrityError`), the caller's change fails
        too: nothing is written without its audit event.
        """
        if not isinstance(events, PreparedEvents):
            events = list(events)
        if not events:
            return []
        _check_events(events)
        self._check_transaction(conn)
        if conn.dialect.name == "postgresql":
            return self._append_pg(conn, events)
        # SQLite: the chain-free part of each event's row and hash made before
        # the write lock when the caller prepared it (FhirStore.encode), else
        # here; under the lock only the chaining (salus.audit.sqliteappend).
        prepared = prepare_events(conn.dialect, events)
        head = self._lock_head(conn)
        recorded_at = self.clock()  # read under the lock: recorded_at follows seq
        return append_prepared(conn, prepared, head.seq, head.hash, recorded_at, HEAD_ID)

    def record(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append ``events`` in a write transaction of their own (durable on return).

        On PostgreSQL this is one statement in autocommit mode (one round
        trip; it commits, with ``synchronous_commit``, before it returns).
        """
        events = list(events)
        if not events:
            return []
        if not self.db.is_sqlite:
            _check_events(events)
            with self.db.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return self._append_pg(conn, events)
        with self.db.write() as conn:
            return self.append(conn, events)

    def record_batch(self, events: Sequence[AuditEvent]) -> list[int]:
        """:meth:`record` for the group commit of the server (the same rows and
        chain), on the pooled DBAPI connection (PostgreSQL: the one statement
        in autocommit). On SQLite under the writer lock, with the statements
        compiled once: SQLAlchemy's
        connection, transaction and execution objects cost more than the
        three statements of an append, and the writer lock that every worker
        waits for is held for all of it (ADR 11, stop-14 amendment)."""
        events = list(events)
        if not events:
            return []
        _check_events(events)
        if not self.db.is_sqlite:
            return self._record_pg(events)
        seqs = self._record_sqlite(events)
        return self.record(events) if seqs is None else seqs

    def _record_pg(self, events: list[AuditEvent]) -> list[int]:
        """``salus_audit_append`` alone in autocommit on the pooled DBAPI
        connection (as :meth:`record` does through SQLAlchemy's connection)."""
        params = pg_record_params(events, self.clock())
        found = self.db.fetch_raw(PG_RECORD, params, on_error=self.raise_pg_error)
        row = None if found is None else found[1]
        last = None if row is None else row[0]
        if last is None:
            raise IntegrityError("The audit chain head could not be moved.")
        return list(range(int(last) - len(events) + 1, int(last) + 1))

    def _record_sqlite(self, events: list[AuditEvent]) -> list[int] | None:
        """None when the chain has no head yet (the general path creates it)."""
        engine = self.db.engine
        head = self._sqlite_head
        if head is None:
            head = self._sqlite_head = _RawStatement(_LOCK_HEAD, engine.dialect)
        dbapi_error = engine.dialect.loaded_dbapi.Error
        sql = head.sql
        prepared = prepare_events(engine.dialect, events)  # before the lock
        with self.db.writer_lock():
            fairy = engine.raw_connection()
            try:
                driver: Any = fairy.driver_connection  # isolation_level None: BEGIN is ours
                cursor = driver.cursor()
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    try:
                        row = cursor.execute(sql, head.args({})).fetchone()
                        if row is None:
                            return None
                        seq, prev_hash = int(row[0]), str(row[1])
                        recorded_at = self.clock()  # under the lock: recorded_at follows seq
                        first = seq + 1
                        seq = write_chained(
                            cursor, engine.dialect, prepared, seq, prev_hash, recorded_at, HEAD_ID
                        )
                        sql = "COMMIT"
                        cursor.execute(sql)
                    finally:
                        if driver.in_transaction:
                            driver.rollback()
                finally:
                    cursor.close()
            except dbapi_error as exc:
                raise DBAPIError.instance(
                    sql, None, exc, dbapi_error, hide_parameters=True, dialect=engine.dialect
                ) from exc
            finally:
                fairy.close()
        return list(range(first, seq + 1))

    def pg_append_json(
        self, events: Sequence[AuditEvent], name: str
    ) -> tuple[str, str, dict[str, Any]]:
        """:meth:`append` of ``events`` as parts of a larger PostgreSQL
        statement: a FROM item named ``name`` that unpacks the events from one
        JSON parameter (``json_array_elements``, in order), the
        ``salus_audit_append(…)`` call over it (its value is the last
        ``seq``), and the parameters (named ``{name}_…``). The same function,
        arguments and hashes as :meth:`append` (ADR 21); the values travel as
        one JSON text, which the driver sends as it is, rather than as 16
        arrays it quotes element by element in Python. Errors of the
        statement go through :meth:`raise_pg_error`."""
        events = list(events)
        _check_events(events)
        recorded_at = self.clock()
        parts = _PG_JSON_PARTS.get(name)
        if parts is None:
            parts = _PG_JSON_PARTS[name] = _pg_json_parts(name)
        params = {
            f"{name}_at": recorded_at,
            f"{name}_text": iso_utc(recorded_at),
            f"{name}_events": pg_json_events(events),
        }
        return parts[0], parts[1], params

    @staticmethod
    def raise_pg_error(exc: BaseException | None) -> None:
        """Raise the chain's own error for a driver error ``exc`` of a
        statement holding :meth:`pg_append_json` (head missing, function
        missing); return for any other error (:func:`salus.audit.pgappend.raise_pg_error`)."""
        raise_pg_error(exc)

    def _append_pg(self, conn: Connection, events: Sequence[AuditEvent]) -> list[int]:
        """Lock the head, hash, insert and move the head in one statement.

        ``recorded_at`` is read just before the statement rather than under
        the head lock, so on PostgreSQL two concurrent appends may store
        ``recorded_at`` values a little out of ``seq`` order (ADR 21); the
        hashes cover the stored value either way.
        """
        params = pg_record_params(events, self.clock())
        try:
            last = conn.exec_driver_sql(PG_RECORD, params).scalar()
        except DBAPIError as exc:
            self.raise_pg_error(exc.orig)
            raise
        if last is None:
            raise IntegrityError("The audit chain head could not be moved.")
        first = int(last) - len(events) + 1
        return list(range(first, int(last) + 1))

    def head(self) -> ChainHead:
        """The committed head: (0, 64 zeros) while the chain is empty."""
        with self.db.read() as conn:
            row = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
            ).first()
        return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(int(row[0]), str(row[1]))

    @staticmethod
    def _check_transaction(conn: Connection) -> None:
        if not conn.in_transaction():
            raise RuntimeError("audit events are appended inside a transaction")
        if conn.dialect.name == "sqlite" and not conn.get_execution_options().get("salus_write"):
            # A deferred SQLite transaction is not exclusive: seq could be taken twice.
            raise RuntimeError("audit events are appended inside Database.write()")

    @staticmethod
    def _lock_head(conn: Connection) -> ChainHead:
        locked = _LOCK_HEAD
        row = conn.execute(locked).first()
        if row is None:
            # First event ever. Concurrent creators: the loser's insert waits for
            # the winner's commit (unique key) and then does nothing.
            dialect_insert = (
                postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            )
            created = conn.execute(
                dialect_insert(audit_head)
                .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(audit_head.c.id)
            ).first()
            if created is not None:
                existing = conn.execute(select(func.max(audit_events.c.seq))).scalar()
                if existing is not None:
                    raise IntegrityError("The audit chain head is missing but events exist.")
            row = conn.execute(locked).first()
            if row is None:
                raise IntegrityError("The audit chain head could not be created.")
        return ChainHead(int(row[0]), str(row[1]))

    # -- group commit ------------------------------------------------------------------
    async def start(self, *, checkpoint_interval: float | None = None) -> None:
        """Start the group-commit batcher (and periodic checkpoints) on this loop.

        For the server lifespan; ``checkpoint_interval`` is in seconds
        (``SALUS_AUDIT_CHECKPOINT_SECONDS``) and needs a signer.
        """
        if self._batcher is None:
            if self._append_lock is None and self._append_lock_path is not None:
                try:
                    self._append_lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    lock = WriterLock(self._append_lock_path)
                    with lock:  # the file can be opened and locked
                        pass
                    self._append_lock = lock
                except OSError:  # still correct without it: batches queue on the head row
                    log.warning("audit append lock file unavailable; batching per process only")
            from salus.audit.asyncappend import pg_async_batching  # imports this module

            record_async, gate_async = pg_async_batching(self, self._append_lock)
            batcher = RecordBatcher(
                self.record_batch,
                max_batch=self.batch_max,
                max_delay=self.batch_delay,
                gate=self._batch_gate,  # take the batch once it may be written
                record_async=record_async,  # PostgreSQL: on the event loop
                gate_async=gate_async,
            )
            await batcher.start()
            self._batcher = batcher
        if checkpoint_interval and self.signer is not None and self._checkpointer is None:
            self._checkpointer = asyncio.create_task(
                self._checkpoint_loop(checkpoint_interval), name="salus-audit-checkpoints"
            )

    async def stop(self) -> None:
        """Flush queued events, stop the batcher, and sign a last checkpoint."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpointer
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.stop()
        if self._append_lock is not None:
            self._append_lock.close()  # reopened if started again
        if checkpointer is not None:
            await self._checkpoint_logged()

    def _batch_gate(self) -> contextlib.AbstractContextManager[object]:
        if self._append_lock is not None:
            return self._append_lock
        return self.db.writer_lock()  # SQLite's writer lock; a no-op on PostgreSQL

    @property
    def batcher(self) -> RecordBatcher | None:
        return self._batcher

    async def record_async(self, event: AuditEvent) -> int:
        """Record one event; returns its seq once it is committed (durable).

        Concurrent calls share a transaction (see :class:`RecordBatcher`).
        Before :meth:`start` (or after :meth:`stop`) the event is written in
        a transaction of its own, in a worker thread: slower, still durable.
        """
        batcher = self._batcher
        if batcher is not None and batcher.running:
            return await batcher.submit(event)
        [seq] = await asyncio.to_thread(self.record, [event])
        return seq

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head and store it in the database and the file.

        Returns ``None`` without a signer, while the chain is empty, or when
        the newest checkpoint already covers the head.
        """
        if self.signer is None:
            return None
        with self.db.write() as conn:
            row = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash)
                .where(audit_head.c.id == HEAD_ID)
                .with_for_update()
            ).first()
            if row is None or int(row[0]) == 0:
                return None
            head = ChainHead(int(row[0]), str(row[1]))
            latest = conn.execute(select(func.max(audit_checkpoints.c.seq))).scalar()
            if latest is not None and int(latest) >= head.seq:
                return None
            created_at = self.clock()
            kid, signature = self.signer.sign(
                Checkpoint.payload_for(head.seq, head.hash, created_at)
            )
            checkpoint = Checkpoint(head.seq, head.hash, created_at, kid, signature)
            conn.execute(
                insert(audit_checkpoints).values(
                    seq=checkpoint.seq,
                    hash=checkpoint.hash,
                    created_at=checkpoint.created_at,
                    kid=checkpoint.kid,
                    signature=checkpoint.signature,
                )
            )
        # After the commit: the file never holds a checkpoint the database lost.
        # (Its (seq, hash) was committed before, with the events, either way.)
        if self.checkpoint_file is not None:
            append_checkpoint_line(self.checkpoint_file, checkpoint)
        return checkpoint

    async def _checkpoint_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._checkpoint_logged()

    async def _checkpoint_logged(self) -> None:
        try:
            await asyncio.to_thread(self.checkpoint)
        except Exception:
            log.exception("audit checkpoint failed")


def append_checkpoint_line(path: Path, checkpoint: Checkpoint) -> None:
    """Append one JSON line to the checkpoint file, durably (fsync).

    Creates the folder (0700) and the file (0600); a new file's directory
    entry is synced too.
    """
    data = checkpoint.to_line().encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError:
        raise Unavailable("The audit checkpoint file could not be written.") from None
