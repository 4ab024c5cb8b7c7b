"""Group commit of inbound MLLP frames, pipelined.

Each connection hands its frame to the committer and waits; a committer
thread takes every frame queued at that moment, stores their messages in one
database transaction (one fsync for all of them) and only then resolves each
connection's wait with its acknowledgment, so nothing is acknowledged before
it is committed (HL7 v2.8 2.9: the receiver accepts responsibility when it
acknowledges; ADR 10).

Up to ``in_flight`` batches are in flight at once, one per thread: while one
batch's commit waits for its fsync (the GIL released), the next thread
gathers the frames that arrived meanwhile, parses their headers, seals them
and inserts them, so the disk's sync latency no longer caps the rate at one
batch per sync. Each batch's ACKs wait for its own commit only. Two batches
in flight with the same duplicate key (a resend racing the original) cannot
both insert it: the unique index on (organization, facility, MSH-10) makes
the later one wait for the earlier one's commit and fail, and the message
store retries it, finding the original (see
:meth:`~salus.hl7.store.MessageStore.record_many`). On SQLite the
transactions themselves still run one at a time (one writer); the overlap is
the work before the transaction and the replies after it.

What follows a commit (``finish``: the outcome, and in ``SALUS_HL7_APPLY=sync``
mode the mapping of each message) runs for one batch at a time, in the
order the batches were taken, so a feed's messages are still applied in
arrival order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Frame", "GroupCommitter"]

log = logging.getLogger("salus.hl7")


@dataclass(frozen=True, slots=True)
class Frame:
    """One MLLP frame as the listener read it."""

    body: bytes
    peer: str | None
    cert: bytes | None
    oversized: bool = False


#: Commits a batch of frames; what it returns is handed to ``Finish``.
Commit = Callable[[Sequence[Frame]], Any]
#: After the commit: the replies, one per frame (None: no reply is due).
Finish = Callable[[Any], list[bytes | None]]

_Waiter = concurrent.futures.Future[bytes | None]


class GroupCommitter:
    """Batches frames from all connections for ``commit`` then ``finish``, on
    ``in_flight`` threads (at most that many batches committing at once)."""

    def __init__(
        self, commit: Commit, finish: Finish, max_batch: int = 256, in_flight: int = 2
    ) -> None:
        self.commit = commit
        self.finish = finish
        self.max_batch = max_batch
        self.in_flight = max(1, in_flight)
        self._queue: deque[tuple[Frame, _Waiter]] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        #: Batches and frames committed so far (for tests and metrics).
        self.batches = 0
        self.frames = 0
        #: The most batches seen committing at the same moment (tests, metrics).
        self.peak_in_flight = 0
        self._running = 0  # batches taken and not finished
        self._taken = 0  # sequence number of the next batch taken
        self._finished = 0  # batches whose finish step is done, in take order
        self._busy_until = 0.0  # monotonic time the last batch ended (or inf while one runs)

    def start(self) -> None:
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"hl7-commit-{n}", daemon=True)
            for n in range(self.in_flight)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the threads."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    async def submit(self, frame: Frame) -> bytes | None:
        """The frame's reply, once its messages are committed (and applied in sync mode)."""
        future: _Waiter = concurrent.futures.Future()
        with self._ready:
            if self._stopping or not self._threads:
                raise ConnectionAbortedError("the HL7 committer is stopped")
            self._queue.append((frame, future))
            self._ready.notify()
        return await asyncio.wrap_future(future)

    def _take(self) -> tuple[int, list[tuple[Frame, _Waiter]]] | None:
        with self._ready:
            while not self._queue:
                if self._stopping:
                    return None
                self._ready.wait()
            count = min(len(self._queue), self.max_batch)
            self._busy_until = math.inf
            self._running += 1
            self.peak_in_flight = max(self.peak_in_flight, self._running)
            sequence = self._taken
            self._taken += 1
            return sequence, [self._queue.popleft() for _ in range(count)]

    def wait_quiet(self, quiet: float = 0.05, most: float = 0.2) -> None:
        """Wait until no frame has been committed for ``quiet`` seconds, at most ``most``.

        The background applier calls it before each message: acknowledging what
        arrives comes first, mapping the backlog fills the gaps, and still moves
        on (one message per ``most`` seconds at least) under a steady stream.
        """
        deadline = time.monotonic() + most
        with self._ready:
            while True:
                now = time.monotonic()
                idle_at = self._busy_until + quiet
                if not self._threads or (not self._queue and idle_at <= now):
                    return
                if now >= deadline:
                    return
                wake = deadline if math.isinf(idle_at) else min(deadline, idle_at)
                self._ready.wait(max(0.001, wake - now))

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            sequence, batch = taken
            try:
                self._one(sequence, batch)
            finally:
                with self._ready:
                    self._running -= 1
                    if self._running == 0:
                        self._busy_until = time.monotonic()
                    self._finished = max(self._finished, sequence + 1)
                    self._ready.notify_all()

    def _turn(self, sequence: int) -> None:
        """Wait until every batch taken before ``sequence`` is finished."""
        with self._ready:
            while self._finished < sequence:
                self._ready.wait()

    def _one(self, sequence: int, batch: list[tuple[Frame, _Waiter]]) -> None:
        try:
            committed = self.commit([frame for frame, _ in batch])
            self._turn(sequence)
            replies = self.finish(committed)
        except Exception as exc:  # the database is down: no ACK, connections close
            log.error("HL7 commit failed: %s", type(exc).__name__)
            self._turn(sequence)
            for _, future in batch:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(ConnectionAbortedError("not committed"))
            return
        with self._ready:
            self.batches += 1
            self.frames += len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            # A connection closed meanwhile cancelled its wait: nothing to send.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_result(reply)
