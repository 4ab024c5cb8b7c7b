"""The server's audit group commit on the event loop (PostgreSQL; ADR 11, stop-15 amendment).

On PostgreSQL a batch of read events is one ``salus_audit_append`` statement
in autocommit (ADR 21). :class:`~salus.audit.batcher.RecordBatcher` wrote it
from a worker thread holding the server's append lock; every turn then cost
a thread hand-off, and while it held the lock (which the other worker
process waits for) the thread had to win the interpreter lock back from the
busy event loop before it could send the statement and again before it
could release the lock. Here the batch is taken, sent and released by the
event loop itself: the lock file is tried without blocking (a worker thread
waits for it only while the other process holds it), and the statement goes
out on the database's async connections (:meth:`Database.fetch_raw_async`),
the loop serving requests while PostgreSQL commits. The statement, its
parameters, the hashes and the rule that an event is acknowledged only after
its commit are those of :meth:`AuditLog.record_batch`. SQLite is unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from salus.audit.events import AuditEvent
from salus.errors import IntegrityError

if TYPE_CHECKING:
    from salus.audit.chain import AuditLog
    from salus.db.engine import WriterLock

__all__ = ["AsyncGateFn", "AsyncRecordFn", "pg_async_batching"]

AsyncRecordFn = Callable[[Sequence[AuditEvent]], Awaitable[list[int]]]
#: Enters the batch's gate from the loop; yields False when it cannot (then
#: the batcher writes in a thread, under the blocking gate).
AsyncGateFn = Callable[[], AbstractAsyncContextManager[bool]]


@asynccontextmanager
async def _open_gate() -> AsyncIterator[bool]:
    yield True


def pg_async_batching(
    audit: AuditLog, append_lock: WriterLock | None
) -> tuple[AsyncRecordFn | None, AsyncGateFn | None]:
    """The async record and gate of ``audit``'s batcher; (None, None) on SQLite."""
    if audit.db.is_sqlite:
        return None, None
    from salus.audit.chain import AuditLog
    from salus.audit.pgappend import PG_RECORD, pg_record_params

    db = audit.db

    async def record(events: Sequence[AuditEvent]) -> list[int]:
        events = list(events)
        if not events:
            return []
        params = pg_record_params(events, audit.clock())
        try:
            found = await db.fetch_raw_async(PG_RECORD, params)
        except DBAPIError as exc:
            if exc.orig is not None:  # head or function missing: the chain's own errors
                AuditLog.raise_pg_error(exc.orig)
            raise
        last = None if found is None else found[1][0]
        if last is None:
            raise IntegrityError("The audit chain head could not be moved.")
        return list(range(int(last) - len(events) + 1, int(last) + 1))

    gate: AsyncGateFn = append_lock.held_async if append_lock is not None else _open_gate
    return record, gate
