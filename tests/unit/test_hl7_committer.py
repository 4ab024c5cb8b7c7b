"""The pipelined group committer (``salus.hl7.committer``): more than one batch
committing at once, each batch's replies only after its own commit, the
step after the commit in the order the batches were taken, and a failed
commit answering only its own frames (no ACK: the connection closes)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from salus.hl7.committer import Frame, GroupCommitter


def _frame(body: bytes) -> Frame:
    return Frame(body, "127.0.0.1", None)


def test_next_batch_commits_while_the_first_waits_and_replies_follow_own_commit() -> None:
    first_in = threading.Event()
    release_first = threading.Event()
    committed: list[bytes] = []
    finished: list[bytes] = []

    def commit(frames: Sequence[Frame]) -> list[bytes]:
        bodies = [f.body for f in frames]
        if bodies == [b"one"]:
            first_in.set()
            # The first batch "syncs" until the second has committed meanwhile.
            assert release_first.wait(5)
        committed.extend(bodies)
        if bodies == [b"two"]:
            release_first.set()
        return bodies

    def finish(bodies: list[bytes]) -> list[bytes | None]:
        finished.extend(bodies)
        return [b"ACK " + b for b in bodies]

    committer = GroupCommitter(commit, finish, in_flight=2)
    committer.start()

    async def scenario() -> tuple[bytes | None, bytes | None]:
        one = asyncio.ensure_future(committer.submit(_frame(b"one")))
        await asyncio.to_thread(first_in.wait, 5)
        two = asyncio.ensure_future(committer.submit(_frame(b"two")))
        return await one, await two

    try:
        replies = asyncio.run(scenario())
    finally:
        committer.stop()
    assert replies == (b"ACK one", b"ACK two")
    # The second batch committed while the first was still in flight...
    assert committed == [b"two", b"one"]
    assert committer.peak_in_flight == 2
    # ...but the step after the commit (sync-mode mapping, replies) kept arrival order.
    assert finished == [b"one", b"two"]
    assert (committer.batches, committer.frames) == (2, 2)


def test_a_failed_commit_closes_only_its_own_frames() -> None:
    first_in = threading.Event()
    release_first = threading.Event()

    def commit(frames: Sequence[Frame]) -> list[bytes]:
        bodies = [f.body for f in frames]
        if bodies == [b"bad"]:
            first_in.set()
            assert release_first.wait(5)
            raise OSError("the database went away")
        release_first.set()
        return bodies

    committer = GroupCommitter(commit, lambda bodies: [b"ACK " + b for b in bodies])
    committer.start()

    async def scenario() -> tuple[BaseException | bytes | None, bytes | None]:
        bad = asyncio.ensure_future(committer.submit(_frame(b"bad")))
        await asyncio.to_thread(first_in.wait, 5)
        good = await committer.submit(_frame(b"good"))
        outcome = (await asyncio.gather(bad, return_exceptions=True))[0]
        return outcome, good

    try:
        bad, good = asyncio.run(scenario())
    finally:
        committer.stop()
    assert isinstance(bad, ConnectionAbortedError)
    assert good == b"ACK good"
    assert (committer.batches, committer.frames) == (1, 1)


def test_one_in_flight_commits_batches_one_after_the_other() -> None:
    active = 0
    most = 0
    lock = threading.Lock()

    def commit(frames: Sequence[Frame]) -> int:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.01)
        with lock:
            active -= 1
        return len(frames)

    committer = GroupCommitter(commit, lambda n: [b"ok"] * n, in_flight=1)
    committer.start()

    async def scenario() -> list[bytes | None]:
        return list(await asyncio.gather(*(committer.submit(_frame(b"x")) for _ in range(20))))

    try:
        replies = asyncio.run(scenario())
    finally:
        committer.stop()
    assert replies == [b"ok"] * 20
    assert most == 1 and committer.peak_in_flight == 1
    assert committer.frames == 20


def test_submit_after_stop_is_refused() -> None:
    committer = GroupCommitter(lambda frames: frames, lambda frames: [None] * len(frames))
    committer.start()
    committer.stop()
    with pytest.raises(ConnectionAbortedError):
        asyncio.run(committer.submit(_frame(b"late")))
