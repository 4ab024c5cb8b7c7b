"""The durable job queue on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from salus.db import Database
from salus.db.tables import jobs
from salus.errors import InvalidInput, Unavailable
from salus.jobs import JobContext, JobQueue, JobRegistry, JobStatus, Worker


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(db: Database, clock: Clock) -> JobQueue:
    return JobQueue(
        db, max_attempts=3, backoff_base=10, backoff_max=60, lease_seconds=30, clock=clock
    )


def test_enqueue_claim_complete(queue: JobQueue) -> None:
    job_id = queue.enqueue("export", {"format": "ndjson"}, tenant="hospital-a")
    [job] = queue.claim("w1")
    assert job.id == job_id
    assert job.status is JobStatus.RUNNING
    assert job.attempts == 1
    assert job.payload == {"format": "ndjson"}
    assert job.tenant == "hospital-a"
    assert queue.claim("w2") == []  # leased
    assert queue.complete(job_id, "w1")
    done = queue.get(job_id)
    assert done.status is JobStatus.DONE and done.finished_at is not None
    assert queue.counts()["done"] == 1


def test_priority_then_due_time(queue: JobQueue, clock: Clock) -> None:
    low = queue.enqueue("a")
    high = queue.enqueue("a", priority=5)
    later = queue.enqueue("a", run_at=clock.now + timedelta(hours=1), priority=9)
    assert [j.id for j in queue.claim("w", limit=5)] == [high, low]
    assert queue.complete(high, "w") and queue.complete(low, "w")
    clock.advance(3600)
    assert [j.id for j in queue.claim("w", limit=5)] == [later]


def test_failures_back_off_then_dead_letter(queue: JobQueue, clock: Clock) -> None:
    job_id = queue.enqueue("forward")
    delays = []
    for attempt in (1, 2):
        [job] = queue.claim("w")
        assert job.attempts == attempt
        failed = queue.fail(job_id, "w", "unavailable: peer down")
        assert failed.status is JobStatus.QUEUED
        delay = (failed.run_at - clock.now).total_seconds()
        delays.append(delay)
        assert queue.claim("w") == []  # not due yet
        clock.advance(delay + 0.001)
    assert 7.5 <= delays[0] <= 12.5 and 15 <= delays[1] <= 25  # 10 s, then 20 s, +-25 %
    [job] = queue.claim("w")
    dead = queue.fail(job_id, "w", "unavailable: peer down")
    assert dead.status is JobStatus.DEAD
    assert dead.last_error == "unavailable: peer down"
    assert queue.claim("w") == []
    assert queue.list(JobStatus.DEAD)[0].id == job_id
    assert queue.retry(job_id)
    assert not queue.retry(job_id)  # only dead jobs
    [again] = queue.claim("w")
    assert again.attempts == 1


def test_backoff_is_capped(queue: JobQueue) -> None:
    assert queue.backoff(30).total_seconds() <= 60 * 1.25


def test_non_retryable_failure_goes_straight_to_dead(queue: JobQueue) -> None:
    job_id = queue.enqueue("x")
    queue.claim("w")
    assert queue.fail(job_id, "w", "invalid", retryable=False).status is JobStatus.DEAD


def test_a_lost_worker_lease_is_taken_over(queue: JobQueue, clock: Clock) -> None:
    job_id = queue.enqueue("long")
    queue.claim("dead-worker")
    clock.advance(31)
    [job] = queue.claim("w2")
    assert job.id == job_id and job.locked_by == "w2" and job.attempts == 2
    assert not queue.complete(job_id, "dead-worker")  # the old worker lost it
    assert queue.complete(job_id, "w2")


def test_heartbeat_keeps_the_lease(queue: JobQueue, clock: Clock) -> None:
    job_id = queue.enqueue("long")
    queue.claim("w1")
    clock.advance(20)
    assert queue.heartbeat(job_id, "w1")
    clock.advance(20)
    assert queue.claim("w2") == []
    assert not queue.heartbeat(job_id, "w2")


def test_a_job_that_keeps_killing_workers_is_buried(queue: JobQueue, clock: Clock) -> None:
    job_id = queue.enqueue("poison")
    for _ in range(3):
        assert queue.claim("w")
        clock.advance(31)
    assert queue.claim("w") == []
    dead = queue.get(job_id)
    assert dead.status is JobStatus.DEAD and dead.last_error is not None
    assert dead.last_error.startswith("worker-lost")


def test_dedup_key_reuses_the_job(queue: JobQueue) -> None:
    first = queue.enqueue("study-stable", {"n": 1}, dedup_key="study:1.2.3")
    second = queue.enqueue("study-stable", {"n": 2}, dedup_key="study:1.2.3")
    assert first == second
    assert len(queue.list()) == 1


def test_enqueue_joins_the_callers_transaction(queue: JobQueue, db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as conn:
        queue.enqueue("outbox", conn=conn)
        queue.enqueue("outbox", conn=conn, dedup_key="k")
        raise RuntimeError("the change failed")
    assert queue.list() == []
    with db.write() as conn:
        queue.enqueue("outbox", conn=conn)
    assert len(queue.list()) == 1


def test_invalid_kind(queue: JobQueue) -> None:
    with pytest.raises(InvalidInput):
        queue.enqueue("")


def test_concurrent_claims_never_share_a_job(db: Database) -> None:
    queue = JobQueue(db, lease_seconds=60)
    total = 60
    for i in range(total):
        queue.enqueue("parallel", {"i": i})
    taken: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while True:
            claimed = queue.claim(name, limit=2)
            if not claimed:
                return
            with lock:
                taken.extend(j.id for j in claimed)
            for job in claimed:
                assert queue.complete(job.id, name)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == total and len(set(taken)) == total
    assert queue.counts()["done"] == total


def test_worker_runs_handlers_and_records_failures(queue: JobQueue, clock: Clock) -> None:
    registry = JobRegistry()
    seen: list[dict[str, object]] = []

    def ok(ctx: JobContext) -> None:
        assert ctx.heartbeat()
        seen.append(ctx.payload)

    def flaky(ctx: JobContext) -> None:
        raise Unavailable("The peer is down.")

    def bad(ctx: JobContext) -> None:
        raise InvalidInput("The payload is wrong.")

    def crash(ctx: JobContext) -> None:
        raise ValueError("Nguyen Van A, born 1950-01-01")  # must never reach last_error

    for kind, handler in [("ok", ok), ("flaky", flaky), ("bad", bad), ("crash", crash)]:
        registry.register(kind, handler)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ok", ok)
    ids = {
        kind: queue.enqueue(kind, {"k": kind})
        for kind in ["ok", "flaky", "bad", "crash", "nohandler"]
    }
    assert Worker(queue, registry, name="w").drain() == 5
    assert seen == [{"k": "ok"}]
    status = {kind: queue.get(job_id) for kind, job_id in ids.items()}
    assert status["ok"].status is JobStatus.DONE
    assert status["flaky"].status is JobStatus.QUEUED
    assert status["flaky"].last_error == "unavailable: The peer is down."
    assert status["bad"].status is JobStatus.DEAD
    assert status["crash"].status is JobStatus.QUEUED
    assert status["crash"].last_error == "builtins.ValueError"
    assert status["nohandler"].last_error is not None
    assert status["nohandler"].last_error.startswith("no-handler")


def test_rows_are_timezone_aware(queue: JobQueue, db: Database) -> None:
    queue.enqueue("x")
    job = queue.list()[0]
    assert job.run_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    with db.read() as conn:
        assert conn.execute(select(jobs.c.kind)).scalar_one() == "x"
