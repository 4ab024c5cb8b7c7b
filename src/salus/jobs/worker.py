"""Job workers: claim due jobs and run their handlers.

Handlers are plain (synchronous) functions registered by job kind; a worker
runs them in a thread so that the event loop of the server stays free. A
handler signals a permanent failure by raising a :class:`SalusError` that is
not retryable and is the client's fault (``http_status < 500``): such a job
goes straight to the dead-letter state. Any other exception is retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from salus.errors import SalusError
from salus.jobs.queue import Job, JobQueue, describe_error

__all__ = ["JobContext", "JobHandler", "JobRegistry", "Worker"]

log = logging.getLogger("salus.jobs")


@dataclass(frozen=True, slots=True)
class JobContext:
    job: Job
    queue: JobQueue
    worker_id: str

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    def heartbeat(self) -> bool:
        """Long handlers call this to keep their lease."""
        return self.queue.heartbeat(self.job.id, self.worker_id)


JobHandler = Callable[[JobContext], None]


class JobRegistry:
    """Which function handles which kind of job."""

    def __init__(self) -> None:
        self._handlers: dict[str, JobHandler] = {}

    def register(self, kind: str, handler: JobHandler) -> None:
        if kind in self._handlers:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._handlers[kind] = handler

    def get(self, kind: str) -> JobHandler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, SalusError) and not exc.retryable and exc.http_status < 500


class Worker:
    """Runs jobs until stopped; several may run side by side on PostgreSQL."""

    def __init__(
        self,
        queue: JobQueue,
        registry: JobRegistry,
        *,
        poll_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.poll_interval = poll_interval
        self.worker_id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask the worker to poll now (after an enqueue in this process)."""
        self._wake.set()

    def run_one(self, job: Job) -> None:
        """Run one claimed job to completion or failure (synchronous)."""
        handler = self.registry.get(job.kind)
        if handler is None:
            self.queue.fail(job.id, self.worker_id, f"no-handler: no handler for kind {job.kind}")
            log.warning("job has no handler", extra={"job_id": job.id, "kind": job.kind})
            return
        try:
            handler(JobContext(job, self.queue, self.worker_id))
        except Exception as exc:  # any failure of a handler is recorded, never lost
            failed = self.queue.fail(
                job.id, self.worker_id, describe_error(exc), retryable=not _permanent(exc)
            )
            log.warning(
                "job failed",
                exc_info=True,
                extra={
                    "job_id": job.id,
                    "kind": job.kind,
                    "attempt": job.attempts,
                    "status": failed.status.value,
                },
            )
            return
        self.queue.complete(job.id, self.worker_id)

    def drain(self, limit: int = 1000) -> int:
        """Run due jobs until none is left (synchronous; for the CLI and tests)."""
        done = 0
        while done < limit:
            claimed = self.queue.claim(self.worker_id, limit=1)
            if not claimed:
                break
            self.run_one(claimed[0])
            done += 1
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and run jobs until ``stop`` is set; finishes the job in hand first."""
        while not stop.is_set():
            try:
                claimed = await asyncio.to_thread(self.queue.claim, self.worker_id, 1)
            except Exception:
                log.exception("job queue unavailable; retrying")
                claimed = []
            if claimed:
                await asyncio.to_thread(self.run_one, claimed[0])
                continue
            self._wake.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            _, pending = await asyncio.wait(
                waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
