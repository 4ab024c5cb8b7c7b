"""The server's audit group commit on the event loop (PostgreSQL; ADR 11, stop-15
amendment): the batch taken under the append lock held from the loop, the one
``salus_audit_append`` on the database's async connections, and the failure
rules (never acknowledged without a commit, never a lock left held)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import types
from pathlib import Path
from typing import Any

import psycopg
import pytest

from salus.audit import AuditLog, Ed25519Signer, verify_chain
from salus.db import Database
from salus.db.engine import WriterLock
from salus.errors import Unavailable
from tests.integration.test_audit import count, read_event, seqs

_DROP = (
    "DROP FUNCTION salus_audit_append(timestamptz, text, text[], text[], text[],"
    " text[], smallint[], text[], text[], text[], text[], text[], text[], text[],"
    " text[], text[], text[], text[], text[])"
)


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "append.lock"


@pytest.fixture
def server_log(db: Database, lock_file: Path) -> AuditLog:
    """An audit log as a server process has it (the append lock of its workers)."""
    return AuditLog(db, signer=Ed25519Signer.generate(), append_lock=lock_file)


def _lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the descriptor drops its lock
    return True


def test_batches_are_written_from_the_loop_on_postgresql(
    db: Database, server_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: every batch goes out on the async connections, none through the
    thread path (``record_batch``); SQLite keeps its writer-lock path."""
    threaded: list[int] = []
    record_batch = server_log.record_batch

    def recording(events: Any) -> list[int]:
        threaded.append(len(events))
        return record_batch(events)

    monkeypatch.setattr(server_log, "record_batch", recording)

    async def main() -> tuple[list[int], int]:
        await server_log.start()
        try:
            got = await asyncio.gather(*(server_log.record_async(read_event()) for _ in range(40)))
            assert server_log.batcher is not None
            return list(got), server_log.batcher.flushes
        finally:
            await server_log.stop()
            await db.aclose()

    got, flushes = asyncio.run(main())
    assert sorted(got) == list(range(1, 41)) and seqs(db) == got and 1 <= flushes < 40
    if db.is_sqlite:
        assert sum(threaded) == 40  # the writer thread, under SQLite's writer lock
    else:
        assert threaded == []
    assert verify_chain(db).ok


@pytest.mark.postgres
def test_a_missing_function_fails_the_events(db: Database, server_log: AuditLog) -> None:
    """Without ``salus_audit_append`` (a database not migrated) the events are
    refused with 503 "run salus migrate", on the loop's path too; none written."""
    if db.is_sqlite:
        pytest.skip("salus_audit_append is PostgreSQL's")
    with db.write() as conn:
        conn.exec_driver_sql(_DROP)

    async def main() -> list[Any]:
        await server_log.start()
        try:
            events = [server_log.record_async(read_event()) for _ in range(3)]
            return list(await asyncio.gather(*events, return_exceptions=True))
        finally:
            await server_log.stop()
            await db.aclose()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Unavailable) and "salus migrate" in str(o) for o in outcomes)
    assert count(db) == 0


@pytest.mark.postgres
def test_lost_connections_fail_the_batch_then_its_events_are_retried(
    db: Database, server_log: AuditLog
) -> None:
    """The loop's connections die (backends terminated): the batch that finds
    them fails before anything is committed, its events are retried one by one
    on new connections and acknowledged once each; the chain verifies."""
    if db.is_sqlite:
        pytest.skip("async connections are PostgreSQL's")
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def main() -> list[int]:
        await server_log.start()
        try:
            first = list(
                await asyncio.gather(*(server_log.record_async(read_event()) for _ in range(3)))
            )
            reader = db._async_reader
            assert reader is not None and reader._idle
            with psycopg.connect(url, autocommit=True) as killer:
                for conn in reader._idle:
                    killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            await asyncio.sleep(0.05)
            later = await asyncio.gather(*(server_log.record_async(read_event()) for _ in range(4)))
            return first + list(later)
        finally:
            await server_log.stop()
            await db.aclose()

    got = asyncio.run(main())
    assert sorted(got) == list(range(1, 8)) and count(db) == 7
    assert verify_chain(db).ok


@pytest.mark.postgres
def test_a_cancelled_wait_for_the_lock_leaves_it_free(
    db: Database, server_log: AuditLog, lock_file: Path
) -> None:
    """While the other worker holds the append lock a thread waits for it; if the
    batcher is cancelled meanwhile (loop shutting down), its events fail (503,
    never acknowledged) and the lock the thread gets afterwards is released
    at once: the other worker is never locked out."""
    if db.is_sqlite:
        pytest.skip("the append lock file is PostgreSQL's (SQLite: the writer lock)")

    async def main() -> Any:
        await server_log.start()
        other = WriterLock(lock_file)  # another worker process's descriptor, in effect
        other.__enter__()
        try:
            assert server_log.batcher is not None
            event = asyncio.create_task(server_log.record_async(read_event()))
            await asyncio.sleep(0.1)
            assert not event.done()  # waiting for the lock
            task = server_log.batcher._task
            assert task is not None
            task.cancel()
            outcome = await asyncio.gather(event, return_exceptions=True)
        finally:
            other.__exit__()
            other.close()
        for _ in range(100):  # the waiting thread gets the lock, then drops it
            await asyncio.sleep(0.02)
            if _lock_is_free(lock_file):
                break
        free = _lock_is_free(lock_file)
        server_log._batcher = None
        await server_log.stop()
        await db.aclose()
        return outcome[0], free

    outcome, free = asyncio.run(main())
    assert isinstance(outcome, Unavailable)
    assert free
    assert count(db) == 0


def test_held_async_is_exclusive_across_descriptors(tmp_path: Path) -> None:
    """``WriterLock.held_async``: taken without blocking when free, waited for
    (loop not blocked) while another descriptor holds it, re-entrant within
    the process; and says so (False) when this process holds it in a thread."""
    path = tmp_path / "lock"
    lock, other = WriterLock(path), WriterLock(path)

    async def main() -> list[str]:
        steps: list[str] = []
        async with lock.held_async() as held:
            assert held and not _lock_is_free(path)
            async with lock.held_async() as again:  # re-entrant
                assert again
        assert _lock_is_free(path)
        other.__enter__()

        async def take() -> None:
            async with lock.held_async() as held:
                assert held
                steps.append("taken")

        waiter = asyncio.create_task(take())
        await asyncio.sleep(0.05)
        steps.append("loop free")  # the loop ran while the waiter waited
        other.__exit__()
        await waiter
        taken, done = threading.Event(), threading.Event()

        def in_a_thread() -> None:  # the blocking form, held by another thread
            with lock:
                taken.set()
                done.wait(5)

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        try:
            assert taken.wait(5)
            async with lock.held_async() as held:
                steps.append(f"held={held}")
        finally:
            done.set()
            thread.join(5)
        return steps

    assert asyncio.run(main()) == ["loop free", "taken", "held=False"]
    lock.close()
    other.close()


def test_held_async_waits_its_turn_right_after_a_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after releasing, the lock is not retried without blocking on the
    loop (a race that the other process's waiter, woken by the release but not
    yet running, would lose): it is waited for in a thread, as the writer
    thread did before, so both processes' waiters race alike; later the
    non-blocking try comes first again."""
    from salus.db import engine as engine_module

    calls: list[str] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            calls.append("try" if operation & fcntl.LOCK_NB else "wait")
        real_flock(fd, operation)

    # A clock that moves only when told: "at once" and "later" do not depend
    # on how busy the machine is.
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(engine_module.fcntl, "flock", flock)
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    lock = WriterLock(tmp_path / "lock")

    async def main() -> None:
        async with lock.held_async():
            pass
        async with lock.held_async():  # at once: its turn after any waiter
            pass
        clock.now += engine_module.TURN_SECONDS * 5
        async with lock.held_async():
            pass

    asyncio.run(main())
    lock.close()
    assert calls == ["try", "wait", "try"]


@pytest.mark.parametrize("with_file", [True, False])
def test_held_async_admits_one_coroutine_at_a_time(tmp_path: Path, with_file: bool) -> None:
    """Two coroutines of one loop (one thread: the thread lock cannot tell them
    apart) take ``held_async`` in turn: the second waits until the first has
    left (the file lock released and taken again), never holds it alongside;
    a coroutine that holds it may still enter it again (re-entrant)."""
    path = tmp_path / "lock"
    lock = WriterLock(path if with_file else None)
    inside: list[str] = []
    overlaps: list[int] = []

    async def hold(name: str) -> None:
        async with lock.held_async() as held:
            assert held
            inside.append(name)
            overlaps.append(len(inside))
            async with lock.held_async() as again:  # the holder itself: re-entrant
                assert again
            await asyncio.sleep(0.05)  # another coroutine runs meanwhile
            if with_file:
                assert not _lock_is_free(path)
            inside.remove(name)

    async def main() -> None:
        await asyncio.gather(hold("a"), hold("b"), hold("c"))

    asyncio.run(main())
    lock.close()
    assert overlaps == [1, 1, 1]
    if with_file:
        assert _lock_is_free(path)


def test_held_async_holder_of_one_loop_is_not_taken_by_another(tmp_path: Path) -> None:
    """A task of a second event loop (another thread) that finds the lock held
    gets False and leaves the holder's state alone: the holding task of the
    first loop may still enter it again afterwards."""
    lock = WriterLock(tmp_path / "lock")
    held_by_a = threading.Event()
    b_done = threading.Event()
    seen_by_b: list[bool] = []

    def loop_b() -> None:
        held_by_a.wait(5)

        async def attempt() -> None:
            async with lock.held_async() as held:
                seen_by_b.append(held)

        asyncio.run(attempt())
        b_done.set()

    async def loop_a() -> bool:
        async with lock.held_async() as held:
            assert held
            held_by_a.set()
            await asyncio.to_thread(b_done.wait, 5)
            async with asyncio.timeout(2):  # re-entered by its holder, not queued
                async with lock.held_async() as again:
                    return again

    thread = threading.Thread(target=loop_b)
    thread.start()
    try:
        assert asyncio.run(loop_a())
    finally:
        thread.join(5)
        lock.close()
    assert seen_by_b == [False]
