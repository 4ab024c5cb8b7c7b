"""Archive events in the durable job queue.

Kinds (payloads are UIDs and the organization, never patient data):

* ``dicom.instance-stored`` ``{study, series, instance, sop_class, org}``: queued in
  the transaction that indexes an instance, for forwarding and analysis (later
  issues consume it; until then its handler only completes it).
* ``dicom.study-stable`` ``{study, org, instances}``: no new instance arrived for
  ``SALUS_DICOM_STABLE_SECONDS``. It is produced by ``dicom.study-stable-check``,
  queued once per quiet period when the first instance of a burst arrives and
  re-queued while instances keep coming.
* ``dicom.imagingstudy-sync`` ``{study, org[, fhir_id]}``: bring the study's FHIR
  ImagingStudy up to date (see :mod:`salus.dicom.fhirlink`); one is queued per
  burst of changes (the study's ``fhir_sync_pending`` flag).
* ``dicom.blob-sweep`` ``{candidates}``: the periodic sweep of orphan blobs
  (:mod:`salus.dicom.sweep`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from salus.db.tables_dicom import dicom_studies
from salus.jobs import JobContext

if TYPE_CHECKING:
    from salus.services import Services

__all__ = [
    "FHIR_SYNC",
    "INSTANCE_STORED",
    "STABLE_CHECK",
    "STUDY_STABLE",
    "register_jobs",
]

log = logging.getLogger("salus.dicom")

INSTANCE_STORED = "dicom.instance-stored"
STUDY_STABLE = "dicom.study-stable"
STABLE_CHECK = "dicom.study-stable-check"
FHIR_SYNC = "dicom.imagingstudy-sync"


class StableChecker:
    """Turns quiet studies into ``dicom.study-stable`` events."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stable = timedelta(seconds=services.settings.dicom_stable_seconds)

    def run(self, ctx: JobContext) -> None:
        study_uid = str(ctx.payload["study"])
        s = dicom_studies.c
        jobs = self.services.jobs
        with self.services.db.write() as conn:
            row = (
                conn.execute(
                    select(dicom_studies).where(s.study_uid == study_uid).with_for_update()
                )
                .mappings()
                .first()
            )
            if row is None:
                return  # deleted meanwhile
            now = jobs.clock()
            due = row["last_instance_at"] + self.stable
            if due > now:  # instances kept coming: look again when it may be quiet
                conn.execute(
                    update(dicom_studies).where(s.pk == row["pk"]).values(stable_check_at=due)
                )
                jobs.enqueue(
                    STABLE_CHECK, {"study": study_uid}, conn=conn, run_at=due, tenant=row["org_id"]
                )
                return
            conn.execute(
                update(dicom_studies).where(s.pk == row["pk"]).values(stable_check_at=None)
            )
            jobs.enqueue(
                STUDY_STABLE,
                {"study": study_uid, "org": row["org_id"], "instances": row["num_instances"]},
                conn=conn,
                tenant=row["org_id"],
            )


def _event_sink(ctx: JobContext) -> None:
    """Placeholder consumer: the events are kept in the queue's history."""
    log.debug("dicom event %s (job %s) has no consumer yet", ctx.job.kind, ctx.job.id)


def register_jobs(services: Services) -> None:
    from salus.dicom.fhirlink import ImagingStudySync
    from salus.dicom.sweep import BLOB_SWEEP, BlobSweep

    registry = services.job_handlers
    registry.register(INSTANCE_STORED, _event_sink)
    registry.register(STUDY_STABLE, _event_sink)
    registry.register(STABLE_CHECK, StableChecker(services).run)
    registry.register(FHIR_SYNC, ImagingStudySync(services).run)
    registry.register(BLOB_SWEEP, BlobSweep(services).run)
