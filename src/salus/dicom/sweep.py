"""The periodic sweep of orphan DICOM blobs (job ``dicom.blob-sweep``).

A store writes the blob first and the index rows after (ADR 9); a refused store
deletes its blob at once, but a process that dies between the two leaves a blob
no instance references. The sweep finds and deletes those, in two passes
``SALUS_DICOM_BLOB_SWEEP_SECONDS`` apart, so that no store in flight can lose
its bytes:

1. **Candidates**: every blob of the (shared) blob store that no
   ``dicom_instances`` row references and that is a DICOM File (the ``DICM``
   prefix of PS3.10 7.1 at byte 128; the blob store also holds FHIR bulk data,
   which the sweep never touches). They go into the payload of the next sweep.
2. **Deletion**, one period later, of the candidates still unreferenced, in a
   write transaction that keeps stores from indexing meanwhile (SQLite's single
   writer; ``LOCK TABLE dicom_instances IN SHARE MODE`` on PostgreSQL). A store
   of the same bytes that commits just after puts its blob back (the store
   checks that its blob exists after its commit).

Each sweep queues the next one (deduplicated by period), and the scheduler
listener queues the first when the server's job worker starts. Deletions are
counted in the log, never named (a digest is not patient data, but the log has
no use for it).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text

from salus.db.tables_dicom import dicom_instances
from salus.jobs import JobContext

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["BLOB_SWEEP", "BlobSweep", "BlobSweepScheduler"]

log = logging.getLogger("salus.dicom")

BLOB_SWEEP = "dicom.blob-sweep"
#: At most this many candidates are carried from one pass to the next.
MAX_CANDIDATES = 50_000
_BATCH = 500


class BlobSweep:
    """The ``dicom.blob-sweep`` job handler."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.period = timedelta(seconds=services.settings.dicom_blob_sweep_seconds)

    def _referenced(self, digests: list[str], conn: Any = None) -> set[str]:
        found: set[str] = set()
        column = dicom_instances.c.blob_digest
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            query = select(column).where(column.in_(batch)).distinct()
            if conn is not None:
                found.update(conn.execute(query).scalars())
            else:
                with self.services.db.read() as own:
                    found.update(own.execute(query).scalars())
        return found

    def _is_dicom_file(self, digest: str) -> bool:
        try:
            return bytes(self.services.blobs.get_range(digest, 128, 132)) == b"DICM"
        except Exception:  # gone meanwhile, or too short to be a DICOM File
            return False

    def candidates(self) -> list[str]:
        """Pass 1: unreferenced DICOM Files in the blob store."""
        found: list[str] = []
        batch: list[str] = []

        def flush() -> None:
            referenced = self._referenced(batch)
            found.extend(d for d in batch if d not in referenced and self._is_dicom_file(d))
            batch.clear()

        for digest in self.services.blobs.list():
            batch.append(digest)
            if len(batch) >= _BATCH:
                flush()
            if len(found) >= MAX_CANDIDATES:
                break
        flush()
        return found[:MAX_CANDIDATES]

    def delete(self, candidates: list[str]) -> int:
        """Pass 2: delete the candidates that are still unreferenced, with index
        writes held off (see the module docstring)."""
        if not candidates:
            return 0
        deleted = 0
        with self.services.db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE dicom_instances IN SHARE MODE"))
            referenced = self._referenced(candidates, conn)
            for digest in candidates:
                if digest not in referenced and self.services.blobs.delete(digest):
                    deleted += 1
        return deleted

    def run(self, ctx: JobContext) -> None:
        previous = [str(d) for d in ctx.payload.get("candidates", [])]
        deleted = self.delete(previous)
        ctx.heartbeat()
        found = self.candidates()
        if deleted or found:
            log.info(
                "dicom blob sweep: %d orphan blobs deleted, %d candidates", deleted, len(found)
            )
        schedule(self.services, found, after=int(ctx.payload.get("period", 0)))


def schedule(services: Services, candidates: list[str] | None = None, after: int = 0) -> None:
    """Queue the next sweep one period from now: one job per period number (the
    dedup key), later than the period ``after`` of the sweep that queues it."""
    seconds = services.settings.dicom_blob_sweep_seconds
    if seconds <= 0:
        return
    jobs = services.jobs
    now = jobs.clock()
    period = max(int(now.timestamp() // seconds) + 1, after + 1)
    jobs.enqueue(
        BLOB_SWEEP,
        {"period": period, "candidates": candidates or []},
        run_at=now + timedelta(seconds=seconds),
        dedup_key=f"{BLOB_SWEEP}:{period}",
    )


class BlobSweepScheduler:
    """A listener (started with the server's job worker) that queues the first sweep."""

    name = "dicom-blob-sweep"

    def __init__(self, services: Services) -> None:
        self.services = services

    async def start(self) -> None:
        import asyncio

        try:
            await asyncio.to_thread(schedule, self.services)
        except Exception:
            log.exception("could not schedule the DICOM blob sweep")

    async def stop(self) -> None:
        return None
