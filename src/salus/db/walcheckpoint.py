"""SQLite WAL checkpoints outside the writer lock (ADR 23).

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint*
copies them back into the database file and fsyncs it (SQLite ``wal.html``,
"Checkpointing"). By default SQLite runs one itself inside the ``COMMIT``
that takes the WAL past 1,000 pages (``wal_autocheckpoint``), on the
committing connection: in Salus that is while the :class:`WriterLock` is
held, so every other writer (the reads' audit batches among them) waits for
the copy and its fsync, and after a large transaction (a group of Bundles)
that is tens to hundreds of milliseconds.

A server therefore turns the automatic checkpoint off on its connections
(``PRAGMA wal_autocheckpoint=0``) and checkpoints from a background thread
instead, on a connection of its own:

* every ``interval`` seconds (every 0.1 s while the WAL holds more than
  1,000 frames) a ``PASSIVE`` checkpoint (``wal.html``,
  "Checkpointing"; ``pragma.html#pragma_wal_checkpoint``): it copies what no
  reader still needs, waits for no reader and takes neither SQLite's write
  lock nor Salus's, so writers commit while it runs;
* the WAL file is written from its start again ("WAL reset", ``wal.html``)
  only by a write transaction that begins after a *complete* checkpoint with
  no reader on an older snapshot. Beside continuous writers a passive
  checkpoint never completes (a commit lands while it copies), so every
  commit appended to a growing file (block allocation, and a journal commit
  of the file's size in every ``fdatasync``). Once the WAL holds
  :data:`RESTART_FRAMES` and the passive checkpoints have caught up to
  within :data:`FINISH_FRAMES` of its end, a ``RESTART`` checkpoint runs
  under the writer lock: it copies those last frames (no commit adds more
  meanwhile), syncs the database file and waits a few ms for readers on
  older snapshots, so that the next writer restarts the WAL and overwrites
  the file's already allocated blocks;
* readers that hold old snapshots can keep passive checkpoints from
  finishing, and a WAL that never finishes a checkpoint is never restarted
  ("checkpoint starvation", ``wal.html`` section 4.2): when the WAL holds more
  than ``limit_pages`` frames, the same ``RESTART`` checkpoint runs under the
  writer lock, waiting at most 200 ms for those readers, so the WAL never
  grows without bound while readers come and go (a reader that keeps one
  snapshot for longer pins the WAL for that long: the bounded checkpoint is
  then retried only every 5 s);
* ``PRAGMA journal_size_limit`` (set on every connection) truncates a WAL
  file that a large transaction grew past the limit at the first commit
  after a restart (below the limit the file is kept, and overwritten).

One server has several processes; each runs a checkpointer, but a tick only
checkpoints in the process that gets an ``flock`` on
``<database>.checkpoint-lock`` without waiting (SQLite would refuse a second
concurrent checkpoint anyway): the checkpoints go on when any one process
restarts.

Durability does not depend on checkpoints: with ``synchronous=FULL`` a
transaction is durable once its commit frame is fsynced in the WAL, and a
process or machine that stops with frames not yet checkpointed replays them
from the WAL on the next open (``wal.html`` sections 2 and 4). A process
that opens the database without a server (the CLI, tests) keeps SQLite's
automatic checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from salus.db.engine import Database

__all__ = ["CheckpointResult", "WalCheckpointer"]

log = logging.getLogger("salus.db")

#: How long the bounded checkpoint (WAL over its limit) waits for readers, in
#: ms, holding the writer lock meanwhile (readers by id and audit batches take
#: a few ms).
BOUND_BUSY_MS = 200

#: After readers kept a bounded checkpoint from finishing (a long search or
#: export on an old snapshot), the next one is tried only this many seconds
#: later, so that writers are not stopped at every tick while it reads; the
#: passive checkpoints go on meanwhile.
BOUND_BACKOFF_S = 5.0

#: While the WAL holds more frames than this (SQLite's own automatic
#: checkpoint threshold; Bundles under load append 10,000 pages a second),
#: the next checkpoint runs after :data:`BUSY_INTERVAL_S` instead of the
#: configured interval, so that passive checkpoints keep up and the bounded
#: one under the writer lock stays a last resort.
BUSY_FRAMES = 1000
BUSY_INTERVAL_S = 0.1

#: A WAL of at least this many frames (16 MiB of 4 KiB pages; a quarter of the
#: limit if that is less) is restarted once the passive checkpoints have caught
#: up to within :data:`FINISH_FRAMES` of its end: those last frames are copied
#: under the writer lock, where no commit can add more, so that the next
#: writer starts the log again from its first frame, over the file's already
#: allocated blocks (``wal.html``, "WAL reset"). Under Bundle load that is
#: about twice a second.
RESTART_FRAMES = 4096
FINISH_FRAMES = 1024
#: Passive checkpoints per tick, outside the writer lock, to get that close.
CATCH_UP_PASSES = 3
#: How long that restart waits for readers on snapshots from before the copy
#: (a reader by id takes a few ms), holding the writer lock; after a busy one
#: the next is tried this many seconds later.
RESTART_BUSY_MS = 10
RESTART_BACKOFF_S = 1.0


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """What one checkpoint did (``PRAGMA wal_checkpoint``'s three values)."""

    mode: str
    #: SQLite could not finish (readers or a writer in the way).
    busy: bool
    #: Frames in the WAL, and how many of them are in the database file now.
    frames: int
    checkpointed: int
    seconds: float


class WalCheckpointer:
    """Checkpoint one SQLite database's WAL from a background thread."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float,
        limit_pages: int,
        restart_pages: int | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if limit_pages < 1:
            raise ValueError("limit_pages must be positive")
        path = db.sqlite_path
        if path is None:
            raise ValueError("only a SQLite database file has a WAL to checkpoint")
        self.db = db
        self.path = path
        self.interval = interval
        self.limit_pages = limit_pages
        #: A WAL of this many frames is restarted once the checkpoints caught
        #: up (default :data:`RESTART_FRAMES`; at most a quarter of the limit;
        #: 0: only the bound restarts it).
        restart = RESTART_FRAMES if restart_pages is None else restart_pages
        if restart < 0:
            raise ValueError("restart_pages must not be negative")
        self.restart_frames = max(1, min(restart, limit_pages // 4)) if restart else 0
        #: Checkpoints run; the ones under the writer lock that restarted the
        #: WAL (its last frames copied, no reader in the way), and the bounded
        #: ones (WAL over its limit) among those under the lock.
        self.checkpoints = 0
        self.restarts = 0
        self.bounded = 0
        #: Time the writer lock was held by checkpoints: in all, and the longest.
        self.locked_seconds = 0.0
        self.max_locked_seconds = 0.0
        self.last: CheckpointResult | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: No checkpoint under the writer lock before this (monotonic), after a
        #: busy one: readers on old snapshots were in the way.
        self._bound_after = 0.0
        self._restart_after = 0.0
        #: The WAL's frames when a restart last succeeded: while it still holds
        #: as many, all copied, no writer came since and there is nothing to do.
        self._restarted_at = -1

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current checkpoint) and close its connection."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                wait = self.next_wait(self.run_once())
            except Exception:  # a busy or failing database: the next tick tries again
                wait = self.interval
                log.warning("WAL checkpoint failed", exc_info=True)

    def next_wait(self, result: CheckpointResult | None) -> float:
        """Seconds until the next tick: sooner while the WAL is large."""
        if result is not None and result.frames > BUSY_FRAMES:
            return min(self.interval, BUSY_INTERVAL_S)
        return self.interval

    def run_once(self) -> CheckpointResult | None:
        """One tick: passive checkpoints, then, under the writer lock, a
        ``RESTART`` checkpoint when the WAL is over its limit (the bound) or
        large and nearly all copied (the restart). None when another process
        of the server checkpoints now."""
        fd = self._lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            result = self._catch_up()
            now = time.monotonic()
            if result.frames > self.limit_pages and now >= self._bound_after:
                result = self._restart_under_lock(BOUND_BUSY_MS)
                self.bounded += 1
                if result.busy:  # and no restart either, while those readers go on
                    self._bound_after = time.monotonic() + BOUND_BACKOFF_S
                    self._restart_after = self._bound_after
                    log.warning(
                        "WAL over its limit and readers kept it from being restarted",
                        extra={"frames": result.frames},
                    )
            elif (
                self.restart_frames
                and result.frames >= self.restart_frames
                and result.frames - result.checkpointed <= FINISH_FRAMES
                and now >= self._restart_after
                and not (result.frames == result.checkpointed == self._restarted_at)
            ):
                result = self._restart_under_lock(RESTART_BUSY_MS)
                if result.busy:
                    self._restart_after = time.monotonic() + RESTART_BACKOFF_S
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _catch_up(self) -> CheckpointResult:
        """Passive checkpoints (at most :data:`CATCH_UP_PASSES`) while a WAL
        worth restarting is more than :data:`FINISH_FRAMES` behind and they
        copy something: writers append while each one runs."""
        result = self._checkpoint("PASSIVE")
        for _ in range(CATCH_UP_PASSES - 1):
            worth = self.restart_frames and result.frames >= self.restart_frames
            if not worth or result.frames - result.checkpointed <= FINISH_FRAMES:
                break
            again = self._checkpoint("PASSIVE")
            if again.frames >= result.frames and again.checkpointed <= result.checkpointed:
                return again  # readers keep it from going further
            result = again
        return result

    def _restart_under_lock(self, busy_ms: int) -> CheckpointResult:
        """A ``RESTART`` checkpoint with the writer lock held: it copies the
        frames not yet copied (no commit adds more meanwhile), syncs the
        database file, and waits at most ``busy_ms`` for readers on older
        snapshots, so that the next writer restarts the WAL from its first
        frame and overwrites the file (``pragma.html#pragma_wal_checkpoint``;
        ``journal_size_limit`` trims a file grown past the limit then)."""
        with self.db.writer_lock():
            started = time.perf_counter()
            try:
                result = self._checkpoint("RESTART", busy_ms)
            finally:
                held = time.perf_counter() - started
                self.locked_seconds += held
                self.max_locked_seconds = max(self.max_locked_seconds, held)
        if not result.busy:
            self.restarts += 1
            self._restarted_at = result.frames
        return result

    def _checkpoint(self, mode: str, busy_ms: int = 0) -> CheckpointResult:
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        started = time.perf_counter()
        busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        result = CheckpointResult(
            mode, bool(busy), int(frames), int(done), time.perf_counter() - started
        )
        self.checkpoints += 1
        self.last = result
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # The checkpoint syncs the WAL, then the database file (FULL).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn = conn
        return self._conn

    def _lock(self) -> int:
        if self._lock_fd is None:
            lock_path = Path(str(self.path) + ".checkpoint-lock")
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd
