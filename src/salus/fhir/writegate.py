"""Precedence for the thread that holds SQLite's write lock (ADR 21, stop 15).

SQLite has one writer; the server's worker threads share one interpreter
lock (GIL). Each SQLite step releases the GIL, and winning it back from
threads busy preparing other requests costs up to the interpreter's switch
interval (5 ms) each time, so under load a transaction Bundle held the
write lock two to three times as long as its own work: every other writer,
in every worker process, waited through it.

:class:`WriteGate` lets a writer announce that it holds the lock
(:meth:`WriteGate.holding`); threads preparing other writes call
:meth:`WriteGate.checkpoint` between entries and, while a writer of their
process holds the lock, wait (without the GIL) until it is done. The writer
then runs alone in its process and releases the lock sooner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GATE", "MAX_WAIT_S", "WriteGate"]

#: The longest a checkpoint waits for one holder (a Bundle of 100 holds
#: the lock for 10-25 ms).
MAX_WAIT_S = 0.2


class WriteGate:
    def __init__(self) -> None:
        self._done = threading.Condition(threading.Lock())
        self._owner: int | None = None

    @property
    def holder(self) -> int | None:
        """The thread (``threading.get_ident()``) that holds the lock, if any."""
        return self._owner

    def enter(self) -> bool:
        """Mark the calling thread as the process's lock holder (it holds the
        lock now); False if it already was (a nested write) or another thread
        is (a second SQLite database in the process: the first one keeps it)."""
        with self._done:
            if self._owner is not None:
                return False
            self._owner = threading.get_ident()
            return True

    def leave(self) -> None:
        """The holder released the lock: wake the threads that wait."""
        if self._owner != threading.get_ident():
            return
        with self._done:
            self._owner = None
            self._done.notify_all()

    @contextmanager
    def holding(self, active: bool = True) -> Iterator[None]:
        """Inside the write transaction: the other threads wait at their
        checkpoints until the block ends (the commit's fsync is left out: it
        needs no interpreter lock, so they may run meanwhile). ``active``
        False (PostgreSQL, whose writers run side by side): no effect."""
        entered = active and self.enter()
        try:
            yield
        finally:
            if entered:
                self.leave()

    def checkpoint(self) -> None:
        """Wait while another thread of this process holds the write lock, at
        most :data:`MAX_WAIT_S` (so a holder that needed this thread could
        never deadlock with it: it would only be slowed down)."""
        if self._owner is None or self._owner == threading.get_ident():
            return
        deadline = time.monotonic() + MAX_WAIT_S
        with self._done:
            while self._owner is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._done.wait(left)


#: The process's gate (one SQLite writer lock per process).
GATE = WriteGate()
