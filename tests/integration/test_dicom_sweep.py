"""The orphan-blob sweep (``dicom.blob-sweep``) on SQLite and PostgreSQL: only DICOM
Files that no instance references in two passes are deleted; referenced blobs,
other parts' blobs and a candidate stored meanwhile stay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import jobs
from salus.dicom.sweep import BLOB_SWEEP, BlobSweep, schedule
from tests.conftest import BACKENDS
from tests.integration.dicom_world import dicom_world, web_sample


@pytest.fixture(params=BACKENDS)
def dw(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with dicom_world(request.param, tmp_path, dicom_blob_sweep_seconds=60) as world:
        yield world


def test_two_passes_delete_only_unreferenced_dicom_files(dw: Any) -> None:
    blobs = dw.services.blobs
    principal = dw.principal()
    kept = dw.archive.store(principal, web_sample("CT_small.dcm")).digest
    orphan = blobs.put(web_sample("MR_small_RLE.dcm")).digest  # a crash left it
    late = blobs.put(web_sample("JPEG2000.dcm")).digest  # stored between the passes
    other = blobs.put(b'{"resourceType":"Patient"}\n' * 10).digest  # FHIR bulk data
    sweep = BlobSweep(dw.services)
    candidates = sweep.candidates()
    assert sorted(candidates) == sorted([orphan, late])
    assert dw.archive.store(principal, web_sample("JPEG2000.dcm")).digest == late
    assert sweep.delete(candidates) == 1
    assert not blobs.exists(orphan)
    assert all(blobs.exists(d) for d in (kept, late, other))
    assert sweep.candidates() == []


def test_the_job_carries_candidates_to_the_next_sweep(dw: Any) -> None:
    blobs = dw.services.blobs
    orphan = blobs.put(web_sample("MR_small_RLE.dcm")).digest
    schedule(dw.services)
    with dw.services.db.write() as conn:  # due now
        conn.execute(
            jobs.update().where(jobs.c.kind == BLOB_SWEEP).values(run_at=dw.services.jobs.clock())
        )
    dw.drain_jobs()  # pass 1: a candidate, the next sweep queued with it
    assert blobs.exists(orphan)
    with dw.services.db.read() as conn:
        queued = (
            conn.execute(
                select(jobs.c.payload).where(jobs.c.kind == BLOB_SWEEP, jobs.c.status == "queued")
            )
            .scalars()
            .all()
        )
    assert [q["candidates"] for q in queued] == [[orphan]]
    with dw.services.db.write() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.kind == BLOB_SWEEP, jobs.c.status == "queued")
            .values(run_at=dw.services.jobs.clock())
        )
    dw.drain_jobs()  # pass 2: deleted
    assert not blobs.exists(orphan)
