"""Group commit for audit events recorded from async code.

Every FHIR read is audited, and its response must not leave before its audit
event is durable. One transaction (and one fsync) per read would cap the
read rate at the disk's commit rate, so concurrent events are queued and
written together: the first event of a burst waits ``max_delay`` seconds for
company, a batch is written in one transaction (in a worker thread, off the
event loop), and each caller's future is resolved only after that commit.
Events arriving while a batch is being written form the next batch, which
is written as soon as the first one commits.

A batch is taken only once its writer may write (``gate``: on SQLite the
database's writer lock, shared by the server's worker processes). Before,
the batch was fixed when its thread started, and with two workers each
batch then waited for the other worker's commit (one fsync) holding only
the events of the moment: about 1.3 events per commit under 8 concurrent
readers, each read waiting for two commits. Events that arrive during that
wait now join the batch (ADR 11, stop-14 amendment).

If a batch fails, its events are retried one by one, so that one bad event
cannot fail the others; callers whose event could not be written get
:class:`~salus.errors.Unavailable` (or the Salus error raised). An event is
never acknowledged without being committed; in the rare case of a commit
whose outcome is unknown (connection lost during COMMIT) an event may be
recorded twice, which leaves the chain valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from salus.audit.asyncappend import AsyncGateFn, AsyncRecordFn
from salus.audit.events import AuditEvent
from salus.errors import SalusError, Unavailable

__all__ = ["RecordBatcher"]

log = logging.getLogger("salus.audit")

RecordFn = Callable[[Sequence[AuditEvent]], list[int]]
#: A re-entrant lock the writer holds while it takes a batch and writes it.
GateFn = Callable[[], AbstractContextManager[object]]
_Item = tuple[AuditEvent, "asyncio.Future[int]"]


class RecordBatcher:
    """Queue events and write them in shared transactions; see the module docstring."""

    def __init__(
        self,
        record: RecordFn,
        *,
        max_batch: int = 256,
        max_delay: float = 0.002,
        gate: GateFn | None = None,
        record_async: AsyncRecordFn | None = None,
        gate_async: AsyncGateFn | None = None,
    ) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be positive and max_delay not negative")
        self._record = record
        #: Entered in the writer thread before the batch is taken; ``record``
        #: runs inside it (so it must be re-entrant if ``record`` takes it too).
        self._gate: GateFn = gate if gate is not None else contextlib.nullcontext
        #: Write on the event loop instead (PostgreSQL, :mod:`salus.audit.asyncappend`):
        #: ``gate_async`` held, then ``record_async``; failed batches are retried
        #: one by one with ``record`` in a thread, as before.
        self._record_async = record_async
        self._gate_async = gate_async
        self.max_batch = max_batch
        self.max_delay = max_delay
        #: Transactions written and the events they held (for tests and metrics).
        self.flushes = 0
        self.events_flushed = 0
        #: Queued events; taken by the writer thread, hence the lock.
        self._pending: list[_Item] = []
        self._pending_lock = threading.Lock()
        self._abandoned = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closing = False
        self._abandoned = False
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="salus-audit-batcher")

    async def stop(self) -> None:
        """Write every queued event, then stop; later submissions are refused."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await task
        finally:
            self._task = None

    async def submit(self, event: AuditEvent) -> int:
        """Queue ``event``; return its seq once the transaction holding it committed."""
        if not isinstance(event, AuditEvent):
            raise TypeError("submit() takes an AuditEvent")
        if not self.running:
            raise Unavailable("The audit trail is not running.")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with self._pending_lock:
            self._pending.append((event, future))
        self._wakeup.set()
        # A cancelled caller does not unqueue its event: the access it records
        # may well have happened.
        return await future

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if not self._pending:
                    if self._closing:
                        return
                    continue
                if len(self._pending) < self.max_batch and not self._closing and self.max_delay:
                    await asyncio.sleep(self.max_delay)  # let the burst gather
                while self._pending:
                    if self._record_async is not None and self._gate_async is not None:
                        await self._flush_pending_async(self._record_async, self._gate_async)
                    else:
                        await self._flush_pending()
                if self._closing:
                    return
        finally:
            # Cancelled (loop shutting down): nobody will write what is queued.
            with self._pending_lock:
                pending, self._pending = self._pending, []
            for _, future in pending:
                _fail(future, Unavailable("The audit trail stopped."))

    def _take(self) -> list[_Item]:
        with self._pending_lock:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
        return batch

    def _write_pending(self, taken: list[list[_Item]]) -> list[int]:
        """In the writer thread: hold the gate, take what is queued now, write it."""
        with self._gate():
            if self._abandoned:  # the loop gave up on this writer (cancelled)
                return []
            batch = self._take()
            taken.append(batch)
            return self._record([event for event, _ in batch]) if batch else []

    async def _flush_pending(self) -> None:
        taken: list[list[_Item]] = []
        try:
            seqs = await asyncio.to_thread(self._write_pending, taken)
        except asyncio.CancelledError:
            # The thread goes on without us: it takes nothing more, and what
            # it took (the access may have been recorded) is reported failed.
            self._abandoned = True
            for batch in taken:
                for _, future in batch:
                    _fail(future, Unavailable("The audit trail stopped."))
            raise
        except Exception as exc:
            if taken:
                await self._failed(taken[0], exc)
            else:  # the gate itself failed (writer lock): fail what is queued
                log.error("audit writer could not start", exc_info=True)
                for _, future in self._take():
                    _fail(future, exc)
            return
        if taken:
            self._resolve(taken[0], seqs)

    async def _flush_pending_async(self, record: AsyncRecordFn, gate: AsyncGateFn) -> None:
        """:meth:`_flush_pending` on the loop: hold the gate, take, write."""
        batch: list[_Item] = []
        try:
            async with gate() as held:
                if not held:  # the gate is held in a thread of this process
                    await self._flush_pending()
                    return
                batch = self._take()
                if not batch:
                    return
                seqs = await record([event for event, _ in batch])
        except asyncio.CancelledError:
            # The statement may have committed: report it failed, never done.
            for _, future in batch:
                _fail(future, Unavailable("The audit trail stopped."))
            raise
        except Exception as exc:
            if batch:
                await self._failed(batch, exc)
            else:  # the gate itself failed (lock file): fail what is queued
                log.error("audit writer could not start", exc_info=True)
                for _, future in self._take():
                    _fail(future, exc)
            return
        self._resolve(batch, seqs)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            seqs = await asyncio.to_thread(self._record, [event for event, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                _fail(future, Unavailable("The audit trail stopped."))
            raise
        except Exception as exc:
            await self._failed(batch, exc)
            return
        self._resolve(batch, seqs)

    async def _failed(self, batch: list[_Item], exc: Exception) -> None:
        """Retry a failed batch one event at a time (one bad event fails alone)."""
        log.error("audit batch of %d event(s) failed", len(batch), exc_info=exc)
        if len(batch) == 1:
            _fail(batch[0][1], exc)
            return
        for event, future in batch:
            await self._flush([(event, future)])

    def _resolve(self, batch: list[_Item], seqs: list[int]) -> None:
        if not batch:
            return
        self.flushes += 1
        self.events_flushed += len(batch)
        for (_, future), seq in zip(batch, seqs, strict=True):
            if not future.done():
                future.set_result(seq)


def _fail(future: asyncio.Future[int], exc: BaseException) -> None:
    if future.done():
        return
    if not isinstance(exc, SalusError):
        error = Unavailable("The audit trail could not be written.")
        error.__cause__ = exc
        exc = error
    future.set_exception(exc)
