"""One audit append for all the server's worker processes (PostgreSQL; ADR 11, stop-16 amendment).

Every read's response waits until its audit event is durable (ADR 7). Each
worker process groups its events into one ``salus_audit_append`` statement
(:class:`~salus.audit.batcher.RecordBatcher`), but with two workers the two
processes' statements took turns behind the append lock file, so a read
could wait through the other worker's WAL flush and then its own.

Here one process, the **leader**, appends for all. It is the process that
holds an exclusive ``flock`` on ``append.leader`` (beside the audit
checkpoints, ``<data dir>/audit/``) and listens on the Unix socket
``append.sock`` beside it (mode 0600 in a 0700 folder: only the server's
own user can connect). Every other worker, a **follower**, sends each of its
batches over that socket; the leader queues them into its own batcher, so
that its own events and the followers' go out in one statement, and answers
each batch, event by event, with the ``seq`` given or the error raised. The
statement, its parameters, the hashes and ``salus_audit_append`` are those of
:meth:`~salus.audit.chain.AuditLog.record_batch`; nothing about the chain
changes. Wire format: frames of a 4-byte big-endian length and UTF-8 JSON;
an event travels as the list of its :class:`AuditEvent` field values and is
built (and checked) again in the leader.

Failure rules (an event is never acknowledged without its commit):

* A follower that cannot connect (no leader yet, or the leader gone) tries to
  become the leader (its ``flock`` is free once the leader process died) and
  otherwise appends the batch itself, as before: nothing was sent, so nothing
  can be recorded twice.
* Once a batch is sent, a broken connection, an answer that does not come
  within ``timeout`` seconds or one that cannot be read fails every event of
  the batch with :class:`AppendOutcomeUnknown` (503): the leader may or may
  not have committed them, so they are neither acknowledged nor retried (the
  reads they belong to are refused). The connection is dropped; the next
  batch connects again (or leads).
* The leader answers a batch only after the commit that holds it; events its
  batcher could not write are answered with the error (Unavailable,
  IntegrityError or InvalidInput, by message only: no event values).
* A frame that cannot be decoded closes that connection (the follower fails
  its batch as above); the leader's own events are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salus.audit.asyncappend import AppendOutcomeUnknown, AsyncRecordFn
from salus.audit.events import AuditEvent
from salus.errors import IntegrityError, InvalidInput, SalusError, Unavailable

if TYPE_CHECKING:
    from salus.audit.batcher import RecordBatcher
    from salus.audit.chain import AuditLog

__all__ = ["AppendOutcomeUnknown", "SharedAppend"]

log = logging.getLogger("salus.audit")

_FIELDS = tuple(f.name for f in fields(AuditEvent))
_HEADER = struct.Struct(">I")
#: Largest frame accepted (a batch is at most a few hundred small events).
MAX_FRAME = 16 * 1024 * 1024
#: Errors a leader sends back by name; anything else is answered Unavailable.
_ERRORS: dict[str, type[SalusError]] = {
    "Unavailable": Unavailable,
    "IntegrityError": IntegrityError,
    "InvalidInput": InvalidInput,
}


def encode_events(events: Sequence[AuditEvent]) -> bytes:
    values = [[getattr(event, name) for name in _FIELDS] for event in events]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_events(body: bytes) -> list[AuditEvent]:
    """The events of a frame, checked again (:class:`AuditEvent`); ValueError if malformed."""
    values = json.loads(body)
    if not isinstance(values, list):
        raise ValueError("a batch is a list")
    events = []
    for item in values:
        if not isinstance(item, list) or len(item) != len(_FIELDS):
            raise ValueError("an event is a list of its fields")
        try:
            events.append(AuditEvent(**dict(zip(_FIELDS, item, strict=True))))
        except (InvalidInput, TypeError) as exc:
            raise ValueError("an event is not valid") from exc
    return events


def _encode_results(results: Sequence[int | BaseException]) -> bytes:
    out: list[Any] = []
    for result in results:
        if isinstance(result, BaseException):
            name = type(result).__name__ if type(result).__name__ in _ERRORS else "Unavailable"
            message = str(result) if isinstance(result, SalusError) else None
            out.append([name, message])
        else:
            out.append(result)
    return json.dumps(out, separators=(",", ":")).encode("utf-8")


def _decode_results(body: bytes, count: int) -> list[int | BaseException]:
    values = json.loads(body)
    if not isinstance(values, list) or len(values) != count:
        raise ValueError("one result per event")
    results: list[int | BaseException] = []
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            results.append(value)
        elif isinstance(value, list) and len(value) == 2 and value[0] in _ERRORS:
            message = value[1] if isinstance(value[1], str) else None
            results.append(_ERRORS[value[0]](message))
        else:
            raise ValueError("a result is a seq or an error")
    return results


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    return await reader.readexactly(size)


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _outcome(future: asyncio.Future[int]) -> int | BaseException:
    error = future.exception()
    return error if error is not None else future.result()


class SharedAppend:
    """This process's side of the shared append: leader or follower (module docstring).

    ``local`` appends a batch on this process's own connections (the batcher's
    PostgreSQL record); :meth:`record` is the batcher's record function.
    """

    def __init__(self, folder: Path, local: AsyncRecordFn, *, timeout: float = 10.0) -> None:
        self.lock_path = folder / "append.leader"
        self.socket_path = folder / "append.sock"
        self.timeout = timeout
        self._local = local
        self._batcher: RecordBatcher | None = None
        self._fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._busy: set[asyncio.Task[None]] = set()
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._delay = 0.0
        #: Events this process appended for others (leader) / sent to the leader.
        self.served_events = 0
        self.sent_events = 0

    @property
    def leader(self) -> bool:
        return self._server is not None

    async def start(self, batcher: RecordBatcher) -> None:
        """Lead if no other process does; otherwise follow (connect on first use)."""
        self._batcher = batcher
        self._delay = batcher.max_delay
        if not await self._try_lead():
            # A follower sends at once: what arrives while a batch is with the
            # leader forms the next one, and the leader gathers its own burst.
            batcher.max_delay = 0.0

    async def _try_lead(self) -> bool:
        try:
            if self._fd is None:
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by the leader (BlockingIOError), or no usable file
            return False
        try:
            # Only the holder of the lock reaches here: a socket file left by a
            # leader that died is stale and replaced.
            self.socket_path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
        except OSError:
            log.warning("audit append socket unavailable; appending in this process only")
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            return False
        self._server = server
        self._drop_connection()
        if self._batcher is not None:
            self._batcher.max_delay = self._delay
        log.info("audit appends of the server's workers are written by this process")
        return True

    async def record(self, events: Sequence[AuditEvent]) -> Sequence[int | BaseException]:
        """Append ``events``: here when leading, else through the leader."""
        if self._server is not None:
            return await self._local(events)
        connection = await self._connect()
        if connection is None:  # nothing sent: lead, or write them here
            await self._try_lead()
            return await self._local(events)
        reader, writer = connection
        try:
            writer.write(_frame(encode_events(events)))
            await writer.drain()
            async with asyncio.timeout(self.timeout):
                body = await _read_frame(reader)
            results = _decode_results(body, len(events))
        except asyncio.CancelledError:
            self._drop_connection()
            raise
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            self._drop_connection()
            log.error("audit batch sent to the leading worker: outcome unknown (%s)", exc.__class__)
            raise AppendOutcomeUnknown() from exc
        self.sent_events += len(events)
        return results

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if self._connection is not None and (
            self._connection[0].at_eof() or self._connection[1].is_closing()
        ):
            self._drop_connection()  # closed by the leader between batches (it stopped)
        if self._connection is None:
            try:
                self._connection = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                return None
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection[1].close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The leader's side of one follower's connection: batch in, results out."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio runs callbacks in tasks
            return
        self._handlers[task] = writer
        try:
            while True:
                try:
                    body = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the follower went away
                self._busy.add(task)
                try:
                    results = await self._append_for_follower(body)
                    if results is None:
                        return  # malformed: drop the connection
                    writer.write(_frame(_encode_results(results)))
                    await writer.drain()
                finally:
                    self._busy.discard(task)
        except (ConnectionError, ValueError):
            return
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def _append_for_follower(self, body: bytes) -> list[int | BaseException] | None:
        try:
            events = decode_events(body)
        except ValueError:
            log.error("audit batch from a worker could not be decoded; connection closed")
            return None
        batcher = self._batcher
        if batcher is None or not batcher.running:
            return [Unavailable("The audit trail is not running.")] * len(events)
        futures = batcher.submit_many(events)
        if futures:
            await asyncio.wait(futures)
        self.served_events += len(events)
        return [_outcome(future) for future in futures]

    async def stop_serving(self, grace: float = 5.0) -> None:
        """Leader: accept no more batches, finish those being appended (then the batcher stops)."""
        server, self._server = self._server, None
        self._drop_connection()
        if server is None:
            return
        server.close()
        busy = list(self._busy)
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task, writer in list(self._handlers.items()):
            task.cancel()
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=grace)
        with contextlib.suppress(OSError):
            self.socket_path.unlink(missing_ok=True)

    def close(self) -> None:
        """After the batcher stopped: release the leader's lock."""
        self._drop_connection()
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


def shared_append(audit: AuditLog, folder: Path) -> SharedAppend | None:
    """The shared append of ``audit``'s server (PostgreSQL), its files in ``folder``;
    None on SQLite or when the folder cannot be made (then each process appends alone)."""
    from salus.audit.asyncappend import pg_async_batching

    record, _ = pg_async_batching(audit, None)
    if record is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        log.warning("audit append folder unavailable; appending per process")
        return None
    return SharedAppend(folder, record)
