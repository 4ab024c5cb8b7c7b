"""Group commit of inbound MLLP frames.

Each connection hands its frame to one committer thread and waits; the
thread takes every frame queued at that moment, stores their messages in one
database transaction (one fsync for all of them) and only then resolves each
connection's wait with its acknowledgment, so nothing is acknowledged before
it is committed (HL7 v2.8 2.9: the receiver accepts responsibility when it
acknowledges; ADR 10). Under load, the messages that arrive while a commit
runs form the next batch; a lone message is committed at once.

One thread also means one hop per batch instead of one per message, and a
single writer of the message store (no lock contention between connections);
in ``SALUS_HL7_APPLY=sync`` mode it applies the batch's messages in arrival
order after the commit.
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

__all__ = ["Frame", "GroupCommitter"]

log = logging.getLogger("salus.hl7")


@dataclass(frozen=True, slots=True)
class Frame:
    """One MLLP frame as the listener read it."""

    body: bytes
    peer: str | None
    cert: bytes | None
    oversized: bool = False


Answer = Callable[[Sequence[Frame]], list[bytes | None]]


class GroupCommitter:
    """Batches frames from all connections for ``answer_many`` (run on its own thread)."""

    def __init__(self, answer_many: Answer, max_batch: int = 256) -> None:
        self.answer_many = answer_many
        self.max_batch = max_batch
        self._queue: deque[tuple[Frame, concurrent.futures.Future[bytes | None]]] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Batches and frames committed so far (for tests and metrics).
        self.batches = 0
        self.frames = 0
        self._busy_until = 0.0  # monotonic time the last batch ended (or inf while one runs)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hl7-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    async def submit(self, frame: Frame) -> bytes | None:
        """The frame's reply, once its messages are committed (and applied in sync mode)."""
        future: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        with self._ready:
            if self._stopping or self._thread is None:
                raise ConnectionAbortedError("the HL7 committer is stopped")
            self._queue.append((frame, future))
            self._ready.notify_all()
        return await asyncio.wrap_future(future)

    def _take(self) -> list[tuple[Frame, concurrent.futures.Future[bytes | None]]] | None:
        with self._ready:
            while not self._queue:
                if self._stopping:
                    return None
                self._ready.wait()
            count = min(len(self._queue), self.max_batch)
            self._busy_until = math.inf
            return [self._queue.popleft() for _ in range(count)]

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
                if self._thread is None or (not self._queue and idle_at <= now):
                    return
                if now >= deadline:
                    return
                wake = deadline if math.isinf(idle_at) else min(deadline, idle_at)
                self._ready.wait(max(0.001, wake - now))

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                replies = self.answer_many([frame for frame, _ in batch])
            except Exception as exc:  # the database is down: no ACK, connections close
                log.error("HL7 commit failed: %s", type(exc).__name__)
                with self._ready:
                    self._busy_until = time.monotonic()
                for _, future in batch:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_exception(ConnectionAbortedError("not committed"))
                continue
            self.batches += 1
            self.frames += len(batch)
            with self._ready:
                self._busy_until = time.monotonic()
            for (_, future), reply in zip(batch, replies, strict=True):
                # A connection closed meanwhile cancelled its wait: nothing to send.
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(reply)
