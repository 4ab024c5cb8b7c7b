"""Group commit of index writes: concurrent stores share one transaction.

Each store (one C-STORE sub-operation, one STOW-RS part) writes its blob in its
own thread, then hands its index work to :meth:`GroupCommit.run`. Whoever
holds the commit lock takes every piece of work queued so far and runs them in
one write transaction, each in a SAVEPOINT of its own (a refusal rolls back
that piece only), and commits once: one fsync of the database for the whole
group instead of one per instance. The caller of each piece gets its result or
its exception after the commit, so nothing is acknowledged before it is
durable. A group of one piece (a single association) runs without a
SAVEPOINT: its refusal rolls the whole transaction back, which is the same
thing, two statements cheaper. With a single association nothing waits; with
several, the stores that arrive while a commit runs go into the next one
(SQLite allows one writer at a time anyway; on PostgreSQL it saves the commits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

from salus.db.engine import Database

__all__ = ["GroupCommit"]

T = TypeVar("T")

#: Most pieces of work in one transaction (bounds how long the write lock is held).
MAX_GROUP = 32


@dataclass(eq=False)
class _Work(Generic[T]):
    fn: Callable[[Connection], T]
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[_Work[Any]] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        #: Transactions committed and pieces of work run (for tests and tuning).
        self.transactions = 0
        self.pieces = 0

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` inside a shared write transaction; returns once it committed."""
        work: _Work[T] = _Work(fn)
        with self._queue_lock:
            self._queue.append(work)
        while not work.done.is_set():
            with self._commit_lock:
                if work.done.is_set():
                    break  # another thread's group carried it
                with self._queue_lock:
                    group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                self._commit(group)
        if work.error is not None:
            raise work.error
        return work.result  # type: ignore[no-any-return]

    def _commit(self, group: list[_Work[Any]]) -> None:
        """Run ``group`` and wake its callers. Pieces that lost a PostgreSQL deadlock
        (two server processes locking one study's rows in another order) run again
        in a fresh transaction, at most :data:`RETRIES` times."""
        try:
            pending = group
            for attempt in range(RETRIES + 1):
                pending = self._commit_once(pending, retry=attempt < RETRIES)
                if not pending:
                    break
        finally:
            for work in group:
                work.done.set()

    def _commit_once(self, group: list[_Work[Any]], *, retry: bool) -> list[_Work[Any]]:
        """One transaction for ``group``; returns the pieces to run again."""
        if len(group) == 1:  # alone: no SAVEPOINT, a refusal rolls the transaction back
            work = group[0]
            try:
                with self.db.write() as conn:
                    work.result = work.fn(conn)
                self.transactions += 1
                self.pieces += 1
            except BaseException as exc:
                work.result, work.error = None, exc
                if retry and _retryable(exc):
                    work.error = None
                    return [work]
            return []
        again: list[_Work[Any]] = []
        try:
            with self.db.write() as conn:
                for work in group:
                    savepoint = conn.begin_nested()
                    try:
                        work.result = work.fn(conn)
                    except BaseException as exc:
                        savepoint.rollback()
                        work.result, work.error = None, exc
                        if retry and _retryable(exc):
                            work.error = None
                            again.append(work)
                    else:
                        savepoint.commit()
            self.transactions += 1
            self.pieces += len(group) - len(again)
        except BaseException as exc:  # the commit itself failed: nothing of the group stays
            if retry and _retryable(exc):
                for work in group:
                    work.result, work.error = None, None
                return list(group)
            for work in group:
                if work.error is None:
                    work.result, work.error = None, exc
            return []
        return again


#: Runs again of a piece that lost a deadlock or a serialization conflict.
RETRIES = 3
#: SQLSTATEs worth running again: serialization_failure, deadlock_detected.
_RETRY_STATES = frozenset({"40001", "40P01"})


def _retryable(exc: BaseException) -> bool:
    """A PostgreSQL deadlock or serialization failure (the DBAPI error's SQLSTATE)."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state in _RETRY_STATES
