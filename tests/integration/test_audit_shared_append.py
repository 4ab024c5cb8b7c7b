"""One audit append for all the server's workers (PostgreSQL; ADR 11, stop-16
amendment, :mod:`salus.audit.sharedappend`): two audit logs on two event loops
(each with its own database connections, as two worker processes have) share
a real Unix socket; the failure rules: a batch whose answer does not come is
failed (503), never acknowledged nor written twice, and nobody waits forever;
a follower whose leader is gone leads."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from salus.audit import AuditLog, Ed25519Signer, verify_chain
from salus.audit.sharedappend import SharedAppend, decode_events, encode_events
from salus.db import Database
from salus.db.engine import create_database
from salus.errors import Unavailable
from tests.integration.test_audit import count, read_event, seqs

T = TypeVar("T")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def pg_db(db: Database) -> Database:
    if db.is_sqlite:
        pytest.skip("the shared append is PostgreSQL's (SQLite: the writer lock)")
    return db


@pytest.fixture
def other_db(pg_db: Database, database_url: tuple[str, str | None]) -> Iterator[Database]:
    """The same database through connections of its own (another worker's)."""
    url, schema = database_url
    other = create_database(url, schema=schema)
    try:
        yield other
    finally:
        other.dispose()


def server_log(db: Database, folder: Path) -> AuditLog:
    return AuditLog(
        db, signer=Ed25519Signer.generate(), append_lock=folder / "append.lock", share_appends=True
    )


class LoopThread:
    """An event loop in a thread of its own: the other worker process, in effect."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def other_loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


def shared_of(log: AuditLog) -> SharedAppend:
    shared = log._shared
    assert shared is not None
    return shared


@pytest.mark.postgres
def test_a_follower_s_events_go_out_in_the_leader_s_appends(
    pg_db: Database, other_db: Database, folder: Path, other_loop: LoopThread
) -> None:
    """The first process to start leads; the other's batches travel over the
    socket and are appended with the leader's own, each answered with its seq
    after the commit; the follower sends nothing to PostgreSQL itself."""
    leader, follower = server_log(pg_db, folder), server_log(other_db, folder)
    other_loop.run(leader.start())

    async def lead_events(n: int) -> list[int]:
        return list(await asyncio.gather(*(leader.record_async(read_event()) for _ in range(n))))

    async def main() -> tuple[list[int], list[int]]:
        await follower.start()
        try:
            assert not shared_of(follower).leader
            theirs = asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(lead_events(30), other_loop.loop)
            )
            ours = await asyncio.gather(*(follower.record_async(read_event()) for _ in range(30)))
            return list(ours), await theirs
        finally:
            await follower.stop()

    ours, theirs = asyncio.run(main())
    lead = shared_of(leader)
    assert lead.leader and lead.served_events == 30
    other_loop.run(leader.stop())
    other_loop.run(pg_db.aclose())
    assert sorted(ours + theirs) == list(range(1, 61)) and seqs(pg_db) == sorted(ours + theirs)
    assert other_db._async_reader is None or other_db._async_reader.opened == 0
    assert verify_chain(pg_db).ok


def _hold_leadership(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "append.leader", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.postgres
@pytest.mark.parametrize("leader_does", ["dies", "hangs"])
def test_a_batch_the_leader_does_not_answer_fails_then_the_follower_leads(
    pg_db: Database, folder: Path, leader_does: str
) -> None:
    """A leader that takes a batch and dies (connection closed) or never answers
    (the timeout): the batch's events fail with 503 and are not written here
    (the leader may have committed them); nobody waits forever. Once the
    leader's lock is free, the follower's next batch makes it the leader and
    is written."""
    fd = _hold_leadership(folder)
    received: list[int] = []

    async def fake_leader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            received.append(len(decode_events(await reader.readexactly(size))))
            if leader_does == "hangs":
                await asyncio.sleep(30)
        finally:
            writer.close()

    follower = server_log(pg_db, folder)

    async def main() -> tuple[list[Any], int]:
        server = await asyncio.start_unix_server(fake_leader, path=str(folder / "append.sock"))
        await follower.start()
        try:
            shared = shared_of(follower)
            assert not shared.leader
            shared.timeout = 0.3
            failed = await asyncio.gather(
                *(follower.record_async(read_event()) for _ in range(3)), return_exceptions=True
            )
            server.close()
            os.close(fd)  # the leader process is gone: its lock with it
            return failed, await follower.record_async(read_event())
        finally:
            await follower.stop()
            await pg_db.aclose()

    failed, seq = asyncio.run(main())
    assert sum(received) == 3
    assert all(isinstance(outcome, Unavailable) for outcome in failed)
    assert seq == 1 and count(pg_db) == 1  # the failed ones were not written
    assert verify_chain(pg_db).ok


@pytest.mark.postgres
def test_when_the_leader_stops_the_follower_leads(
    pg_db: Database, other_db: Database, folder: Path, other_loop: LoopThread
) -> None:
    """A leader that stops (a worker restarted) answers what it took, closes its
    socket and frees its lock: the follower's next batch finds no leader, leads
    and appends; the chain goes on."""
    leader, follower = server_log(pg_db, folder), server_log(other_db, folder)
    other_loop.run(leader.start())

    async def main() -> tuple[list[int], list[int], bool]:
        await follower.start()
        try:
            before = [await follower.record_async(read_event()) for _ in range(2)]
            other_loop.run(leader.stop())
            await asyncio.sleep(0.05)  # the follower's loop sees the socket closed
            after = [await follower.record_async(read_event()) for _ in range(2)]
            return before, after, shared_of(follower).leader
        finally:
            await follower.stop()
            await other_db.aclose()

    before, after, leads = asyncio.run(main())
    assert before == [1, 2] and after == [3, 4] and leads
    assert verify_chain(pg_db).ok


@pytest.mark.postgres
def test_a_malformed_batch_closes_its_connection_only(pg_db: Database, folder: Path) -> None:
    """The leader drops a connection whose frame is not a batch of valid events
    (refused, nothing written) and goes on with its own events."""
    leader = server_log(pg_db, folder)

    async def main() -> tuple[bytes, int]:
        await leader.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(folder / "append.sock"))
            body = b'[["rest","Z"]]'
            writer.write(struct.pack(">I", len(body)) + body)
            answer = await asyncio.wait_for(reader.read(), 5)  # EOF: closed
            writer.close()
            return answer, await leader.record_async(read_event())
        finally:
            await leader.stop()
            await pg_db.aclose()

    answer, seq = asyncio.run(main())
    assert answer == b"" and seq == 1 and count(pg_db) == 1


def test_events_travel_unchanged() -> None:
    """An event decoded from its frame is the event sent (Unicode, nested detail)."""
    event = read_event(detail={"q": 'Ünïcødé "quoted"', "n": [1, 2.5, {"x": None}]})
    assert decode_events(encode_events([event, read_event()])) == [event, read_event()]
    with pytest.raises(ValueError):
        decode_events(b'{"not": "a batch"}')
