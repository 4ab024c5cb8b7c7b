"""Group commit for audit events recorded from async code.

Every FHIR read is audited, and its response must not leave before its audit
event is durable. One transaction (and one fsync) per read would cap the
read rate at the disk's commit rate, so concurrent events are queued and
written together: the first event of a burst waits ``max_delay`` seconds for
company, a batch is written in one transaction (in a worker thread, off the
event loop), and each caller's future is resolved only after that commit.
Events arriving while a batch is being written form the next batch, which
is written as soon as the first one commits.

If a batch fails, its events are retried one by one, so that one bad event
cannot fail the others; callers whose event could not be written get
:class:`~salus.errors.Unavailable` (or the Salus error raised). An event is
never acknowledged without being committed; in the rare case of a commit
whose outcome is unknown (connection lost during COMMIT) an event may be
recorded twice, which leaves the chain valid.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from salus.audit.events import AuditEvent
from salus.errors import SalusError, Unavailable

__all__ = ["RecordBatcher"]

log = logging.getLogger("salus.audit")

RecordFn = Callable[[Sequence[AuditEvent]], list[int]]


class RecordBatcher:
    """Queue events and write them in shared transactions; see the module docstring."""

    def __init__(self, record: RecordFn, *, max_batch: int = 256, max_delay: float = 0.002) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be positive and max_delay not negative")
        self._record = record
        self.max_batch = max_batch
        self.max_delay = max_delay
        #: Transactions written (for tests and metrics).
        self.flushes = 0
        self._pending: list[tuple[AuditEvent, asyncio.Future[int]]] = []
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
                    batch = self._pending[: self.max_batch]
                    del self._pending[: self.max_batch]
                    await self._flush(batch)
                if self._closing:
                    return
        finally:
            # Cancelled (loop shutting down): nobody will write what is queued.
            pending, self._pending = self._pending, []
            for _, future in pending:
                _fail(future, Unavailable("The audit trail stopped."))

    async def _flush(self, batch: list[tuple[AuditEvent, asyncio.Future[int]]]) -> None:
        try:
            seqs = await asyncio.to_thread(self._record, [event for event, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                _fail(future, Unavailable("The audit trail stopped."))
            raise
        except Exception as exc:
            log.error("audit batch of %d event(s) failed", len(batch), exc_info=True)
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            for event, future in batch:
                await self._flush([(event, future)])
            return
        self.flushes += 1
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
