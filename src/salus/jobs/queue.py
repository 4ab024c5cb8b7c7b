"""A durable job queue in the database.

Jobs are rows. Workers *claim* due jobs under a lease: on PostgreSQL with
``SELECT … FOR UPDATE SKIP LOCKED`` so that many workers never take the
same job; on SQLite inside one immediate transaction (one writer, and the
server runs a single worker). A worker that dies loses its lease and the job
is claimed again. Failures are retried with exponential backoff and jitter;
a job out of attempts, or failing with an error that retrying cannot fix,
goes to the ``dead`` state (the dead-letter queue) until an operator retries
it (``salus jobs retry``).

``enqueue`` takes an optional connection so that a service can enqueue in
the same transaction as the change that calls for the job (the outbox
pattern): the job exists if and only if the change was committed.

``last_error`` holds an error code and message free of patient data, never
an exception's text from outside Salus.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from salus.db.engine import Database
from salus.db.tables import jobs
from salus.db.types import utcnow
from salus.errors import InvalidInput, NotFound, SalusError

__all__ = ["Job", "JobQueue", "JobStatus", "describe_error"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    last_error: str | None
    dedup_key: str | None
    tenant: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> Job:
        values = dict(row)
        values["status"] = JobStatus(values["status"])
        return cls(**values)


def describe_error(exc: BaseException) -> str:
    """A patient-data-free description of a failure, for ``last_error``."""
    if isinstance(exc, SalusError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


#: Statements built once (an enqueue per stored DICOM instance, HL7 message...).
_INSERT = jobs.insert().returning(jobs.c.id)
_INSERT_UNLESS_DUPLICATE = {
    name: dialect_insert(jobs)
    .on_conflict_do_nothing(index_elements=["dedup_key"])
    .returning(jobs.c.id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_BY_DEDUP_KEY = select(jobs.c.id).where(jobs.c.dedup_key == bindparam("key"))


class JobQueue:
    """Enqueue, claim, complete, fail and inspect jobs."""

    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 5,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        lease_seconds: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.lease = timedelta(seconds=lease_seconds)
        self.clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not security

    # -- producing -------------------------------------------------------------------
    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        tenant: str | None = None,
    ) -> int:
        """Add a job; with ``dedup_key``, an existing job with that key is reused.

        Returns the job id.
        """
        if not kind or len(kind) > 100:
            raise InvalidInput("A job kind must be 1 to 100 characters.")
        now = self.clock()
        values = {
            "kind": kind,
            "payload": dict(payload or {}),
            "status": JobStatus.QUEUED.value,
            "priority": priority,
            "attempts": 0,
            "max_attempts": max_attempts or self.max_attempts,
            "run_at": run_at or now,
            "dedup_key": dedup_key,
            "tenant": tenant,
            "created_at": now,
            "updated_at": now,
        }
        if conn is None:
            with self.db.write() as own:
                return self._insert(own, values)
        return self._insert(conn, values)

    def _insert(self, conn: Connection, values: dict[str, Any]) -> int:
        if values["dedup_key"] is None:
            return int(conn.execute(_INSERT, values).scalar_one())
        dialect = conn.dialect.name
        inserted = conn.execute(_INSERT_UNLESS_DUPLICATE[dialect], values).scalar_one_or_none()
        if inserted is not None:
            return int(inserted)
        existing = conn.execute(_BY_DEDUP_KEY, {"key": values["dedup_key"]}).scalar_one()
        return int(existing)

    # -- consuming -------------------------------------------------------------------
    def claim(self, worker_id: str, limit: int = 1) -> list[Job]:
        """Take up to ``limit`` due jobs under a lease for ``worker_id``."""
        now = self.clock()
        with self.db.write() as conn:
            self._bury_lost(conn, now)
            due = or_(
                and_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_at <= now),
                and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.locked_until < now),
            )
            ids_query = (
                select(jobs.c.id)
                .where(due)
                .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = [int(i) for i in conn.execute(ids_query).scalars()]
            if not ids:
                return []
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(ids))
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=jobs.c.attempts + 1,
                    locked_by=worker_id,
                    locked_until=now + self.lease,
                    updated_at=now,
                )
                .returning(*jobs.c)
            ).mappings()
            claimed = [Job.from_row(row) for row in rows]
        return sorted(claimed, key=lambda j: (-j.priority, j.run_at, j.id))

    def _bury_lost(self, conn: Connection, now: datetime) -> None:
        """Jobs whose lease ran out on their last attempt go to the dead state."""
        conn.execute(
            update(jobs)
            .where(
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.locked_until < now,
                jobs.c.attempts >= jobs.c.max_attempts,
            )
            .values(
                status=JobStatus.DEAD.value,
                locked_by=None,
                locked_until=None,
                last_error="worker-lost: the worker stopped before finishing the job",
                updated_at=now,
                finished_at=now,
            )
        )

    def heartbeat(self, job_id: int, worker_id: str) -> bool:
        """Extend the lease of a running job; False if the worker lost it."""
        now = self.clock()
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.locked_by == worker_id,
                    jobs.c.status == JobStatus.RUNNING.value,
                )
                .values(locked_until=now + self.lease, updated_at=now)
            )
            return result.rowcount == 1

    def complete(self, job_id: int, worker_id: str) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.locked_by == worker_id,
                    jobs.c.status == JobStatus.RUNNING.value,
                )
                .values(
                    status=JobStatus.DONE.value,
                    locked_by=None,
                    locked_until=None,
                    last_error=None,
                    updated_at=now,
                    finished_at=now,
                )
            )
            return result.rowcount == 1

    def backoff(self, attempts: int) -> timedelta:
        """Exponential backoff with jitter: base·2^(n-1), capped, times 0.75-1.25."""
        delay = min(self.backoff_max, self.backoff_base * (2 ** max(0, attempts - 1)))
        return timedelta(seconds=delay * (0.75 + self._random.random() * 0.5))

    def fail(self, job_id: int, worker_id: str, error: str, *, retryable: bool = True) -> Job:
        """Record a failed attempt: schedule a retry, or move the job to ``dead``."""
        now = self.clock()
        with self.db.write() as conn:
            row = (
                conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update())
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound("No such job.")
            job = Job.from_row(row)
            if job.status is not JobStatus.RUNNING or job.locked_by != worker_id:
                return job
            error = error[:2000]
            if retryable and job.attempts < job.max_attempts:
                values: dict[str, Any] = {
                    "status": JobStatus.QUEUED.value,
                    "run_at": now + self.backoff(job.attempts),
                }
            else:
                values = {"status": JobStatus.DEAD.value, "finished_at": now}
            values.update(locked_by=None, locked_until=None, last_error=error, updated_at=now)
            updated = (
                conn.execute(
                    update(jobs).where(jobs.c.id == job_id).values(**values).returning(*jobs.c)
                )
                .mappings()
                .one()
            )
            return Job.from_row(updated)

    # -- operating -------------------------------------------------------------------
    def retry(self, job_id: int) -> bool:
        """Put a dead job back in the queue with fresh attempts."""
        now = self.clock()
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.DEAD.value)
                .values(
                    status=JobStatus.QUEUED.value,
                    attempts=0,
                    run_at=now,
                    finished_at=None,
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    def retry_dead(self, kind: str | None = None) -> int:
        now = self.clock()
        conditions = [jobs.c.status == JobStatus.DEAD.value]
        if kind:
            conditions.append(jobs.c.kind == kind)
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(*conditions)
                .values(
                    status=JobStatus.QUEUED.value,
                    attempts=0,
                    run_at=now,
                    finished_at=None,
                    updated_at=now,
                )
            )
            return int(result.rowcount)

    def get(self, job_id: int) -> Job:
        with self.db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFound("No such job.")
        return Job.from_row(row)

    def list(
        self,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit).offset(offset)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if kind:
            query = query.where(jobs.c.kind == kind)
        with self.db.read() as conn:
            return [Job.from_row(row) for row in conn.execute(query).mappings()]

    def counts(self) -> dict[str, int]:
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        result = {status.value: 0 for status in JobStatus}
        with self.db.read() as conn:
            for status, count in conn.execute(query):
                result[str(status)] = int(count)
        return result
