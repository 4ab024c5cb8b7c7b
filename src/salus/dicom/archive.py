"""The DICOM archive service: store, find, retrieve and delete instances.

This is the core the protocol edges share; it knows no DIMSE and no HTTP.
How an edge uses it (DIMSE here, DICOMweb in ``salus.dicom.web``):

* **store** (C-STORE, STOW-RS): ``archive.store(principal, part10_bytes)``
  returns a :class:`StoreResult` (``outcome``: ``stored``, ``duplicate`` (same
  bytes again: nothing done), ``kept`` (policy ``keep``: the first instance
  stays), ``replaced``). Refusals raise :class:`~salus.errors.SalusError`:
  ``InvalidInput`` (0xA900 / STOW failure reason 0xA900), ``Forbidden``,
  :class:`DuplicateInstance` (0x0111), ``PatientConflict`` /
  ``StudyOwnedElsewhere`` (0xA900). C-STORE gives only the data set: wrap it
  with :func:`salus.dicom.parse.part10_from_dimse` first.
* **find** (C-FIND, QIDO-RS): ``archive.find(principal, level, identifier,
  limit=…, offset=…)`` with ``identifier`` a mapping of DICOM keyword to a
  query value (text as in PS3.4 C.2.2.2, or a list of item mappings for a
  sequence); returns :class:`~salus.dicom.query.Match` objects whose
  ``attributes`` map keywords to values (``None`` when empty) for every
  indexed key of the level and its parents.
* **retrieve** (C-GET, C-MOVE, WADO-RS): ``archive.instances(principal,
  level, identifier)`` gives :class:`~salus.dicom.query.InstanceRef` objects
  (no bytes); ``archive.read(ref)`` the Part-10 file exactly as received
  (``ref.dataset_offset``: where the data set starts); ``archive.metadata(
  principal, study, series=None, instance=None)`` the DICOM JSON of each
  instance (PS3.18 F.2) from the database, BulkDataURIs relative to the
  DICOMweb root (``studies/…/bulkdata/<tag path>``).
* **delete**: ``archive.delete(principal, study, series=None, instance=None)``.

Every call is authorized by the policy engine as resource type
``ImagingStudy`` (the FHIR type that mirrors a study; scopes and roles apply
unchanged), filtered in SQL by the study's organization and linked patient,
and audited (category ``dicom``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, RowMapping

from salus.audit.chain import AuditLog
from salus.audit.events import AuditEvent
from salus.config import Settings
from salus.db.engine import Database
from salus.db.tables_dicom import dicom_instances, dicom_series, dicom_studies
from salus.db.types import utcnow
from salus.dicom import events
from salus.dicom.groupcommit import GroupCommit
from salus.dicom.index import insert_instance, remove_instance, select_locked, upsert_hierarchy
from salus.dicom.matching import Level, QueryValue
from salus.dicom.parse import ParsedInstance, parse_part10
from salus.dicom.query import InstanceRef, Match, QueryPlanner
from salus.errors import Conflict, Forbidden, InvalidInput, NotFound
from salus.jobs import JobQueue
from salus.security.policy import AccessRequest, Decision, Interaction, PolicyEngine, RecordFilter
from salus.security.principal import Principal, Purpose
from salus.storage.blobstore import BlobRef, BlobStore
from salus.storage.envelope import ValueSealer

__all__ = ["DicomArchive", "DuplicateInstance", "StoreResult", "StudyMismatch"]

log = logging.getLogger("salus.dicom")

#: Threads that write blobs while the storing thread parses (see :meth:`DicomArchive.store`).
_BLOB_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="salus-dicom-blob")

#: The FHIR resource type DICOM access is authorized as.
RESOURCE_TYPE = "ImagingStudy"


class DuplicateInstance(Conflict):
    """Status 0x0111 Duplicate SOP Instance (PS3.7 Annex C): the ``reject`` policy."""

    dimse_status = 0x0111
    code = "dicom-duplicate-instance"

    @classmethod
    def default_message(cls) -> str:
        return "An instance with this SOP Instance UID and other content is already stored."


class StudyMismatch(InvalidInput):
    """PS3.18 10.5.1: an instance posted to ``/studies/{study}`` is of another study."""

    code = "dicom-study-mismatch"

    @classmethod
    def default_message(cls) -> str:
        return "The instance belongs to another study than the one in the URL."


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: str  # stored | duplicate | kept | replaced
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    digest: str
    size: int
    #: The index kept patient attributes that differ from the instance's (policy
    #: ``keep``): a C-STORE/STOW warning 0xB000 (coercion of data elements).
    coerced: bool = False


class DicomArchive:
    """The archive of one Salus process (``services.dicom``)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        policy: PolicyEngine,
        audit: AuditLog,
        jobs: JobQueue,
        sealer: ValueSealer | None,
        *,
        duplicate_policy: str = "keep",
        patient_policy: str = "update",
        stable_seconds: float = 60.0,
        fhir_sync: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.policy = policy
        self.audit = audit
        self.jobs = jobs
        self.sealer = sealer
        self.duplicate_policy = duplicate_policy
        self.patient_policy = patient_policy
        self.stable = timedelta(seconds=stable_seconds)
        self.fhir_sync = fhir_sync
        self.clock = clock
        self.planner = QueryPlanner(db.dialect)
        self.group = GroupCommit(db)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        policy: PolicyEngine,
        audit: AuditLog,
        jobs: JobQueue,
        sealer: ValueSealer | None,
    ) -> DicomArchive:
        return cls(
            db,
            blobs,
            policy,
            audit,
            jobs,
            sealer,
            duplicate_policy=settings.dicom_duplicate_policy,
            patient_policy=settings.dicom_patient_conflict,
            stable_seconds=settings.dicom_stable_seconds,
            fhir_sync=settings.dicom_fhir_sync,
        )

    # -- authorization -----------------------------------------------------------------
    def authorize(
        self, principal: Principal, interaction: Interaction, purpose: Purpose | None = None
    ) -> Decision:
        decision = self.policy.authorize(
            principal, AccessRequest(RESOURCE_TYPE, interaction, purpose)
        )
        if decision.deidentify:
            raise Forbidden("De-identified access to images is not offered.")
        return decision

    def _event(
        self,
        principal: Principal,
        action: str,
        entity: str,
        description: str,
        *,
        patient_key: str | None = None,
        purpose: Purpose | None = None,
        outcome: int = 0,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        return AuditEvent.for_principal(
            principal,
            category="dicom",
            action=action,
            outcome=outcome,
            entity=entity[:300],
            patient_key=patient_key,
            purpose=purpose,
            description=description[:300],
            detail=detail,
        )

    def record_refusal(self, principal: Principal | None, operation: str, reason: str) -> None:
        """Audit a refused association or operation (never raises)."""
        try:
            self.audit.record(
                [
                    AuditEvent.for_principal(
                        principal,
                        category="security",
                        action="E",
                        outcome=4,
                        entity=f"dicom {operation}"[:300],
                        description=f"refused: {reason}"[:300],
                        flags=["refused"],
                    )
                ]
            )
        except Exception:
            log.exception("could not record a DICOM refusal in the audit trail")

    # -- metadata sealing --------------------------------------------------------------
    def _seal(self, sop_uid: str, digest: str, metadata: Mapping[str, Any]) -> bytes:
        raw = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()
        if self.sealer is None:
            return raw
        return self.sealer.seal(raw, f"dicom:{sop_uid}:{digest}".encode())

    def _open(self, sop_uid: str, digest: str, body: bytes) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self._open_raw(sop_uid, digest, body))
        return loaded

    def _open_raw(self, sop_uid: str, digest: str, body: bytes) -> bytes:
        raw = bytes(body)
        if self.sealer is not None and raw.startswith(ValueSealer.MAGIC):
            raw = bytes(self.sealer.open(raw, f"dicom:{sop_uid}:{digest}".encode()))
        return raw

    # -- store -------------------------------------------------------------------------
    def store(self, principal: Principal, data: bytes, study: str | None = None) -> StoreResult:
        """Keep one Part-10 file as received and index it (PS3.4 B.2.2 semantics).

        The blob is written first (content-addressed: the same bytes again write
        nothing; while the file is parsed), then the index rows, the events and
        the audit event commit in one transaction; a refusal leaves no row, and
        the blob is deleted again when no instance references it (a crash
        between the two leaves an unreferenced blob, which the sweep removes;
        never half an instance).
        """
        self.authorize(principal, Interaction.CREATE)
        # The blob's address first (SHA-256, ~0.3 ms for a CT image), so that the index
        # statements need not wait for the blob: the write (encryption, fsyncs) runs in
        # a helper thread while this one parses and runs them, and the transaction
        # waits for it before it commits (nothing is acknowledged before both are durable).
        digest = hashlib.sha256(data).hexdigest()
        writing = _BLOB_WRITERS.submit(self.blobs.put, data, sha256=digest)
        try:
            parsed = parse_part10(data)
            if study is not None and parsed.study_uid != study:
                raise StudyMismatch()
        except BaseException:
            try:
                self._collect_blobs([writing.result().digest])
            except Exception:
                log.exception("could not remove the blob of a refused instance")
            raise
        try:
            result = self._index(principal, parsed, data, digest, len(data), writing)
        except BaseException:
            # Refused or failed: the blob just written may be referenced by nothing.
            try:
                writing.result()
            except Exception:
                log.exception("a blob write failed")
            self._collect_blobs([digest])
            raise
        blob = writing.result()
        if blob.digest != digest:  # pragma: no cover - the same SHA-256 of the same bytes
            raise RuntimeError("the blob store addressed the instance differently")
        if result.outcome == "kept":
            self._collect_blobs([digest])
        return result

    def _index(
        self,
        principal: Principal,
        parsed: ParsedInstance,
        data: bytes,
        digest: str,
        size: int,
        writing: Future[BlobRef] | None = None,
    ) -> StoreResult:
        """The transaction of :meth:`store`: shared with concurrent stores
        (:class:`~salus.dicom.groupcommit.GroupCommit`), durable when this returns.
        The metadata is sealed before, outside the write lock; a new instance's
        transaction waits for its blob (``writing``) before it commits."""
        values = dict(parsed.instance)
        values.update(
            sop_instance_uid=parsed.sop_instance_uid,
            blob_digest=digest,
            size=size,
            dataset_offset=parsed.dataset_offset,
            metadata_json=self._seal(parsed.sop_instance_uid, digest, parsed.metadata),
        )

        def work(conn: Connection) -> tuple[StoreResult, str | None]:
            done = self._index_in(conn, principal, parsed, values, digest, size)
            if writing is not None and done[0].outcome in ("stored", "replaced"):
                writing.result()  # the blob is durable before the row commits
            return done

        result, old_digest = self.group.run(work)
        if result.outcome in ("stored", "replaced"):
            # A concurrent deletion of the same content may have removed the blob
            # between our put and our commit: put it back (one existence check).
            if not self.blobs.exists(digest):
                self.blobs.put(data, sha256=digest)
        if old_digest is not None:
            self._collect_blobs([old_digest])
        return result

    def _index_in(
        self,
        conn: Connection,
        principal: Principal,
        parsed: ParsedInstance,
        values: dict[str, Any],
        digest: str,
        size: int,
    ) -> tuple[StoreResult, str | None]:
        now = self.clock()
        old_digest: str | None = None
        existing = select_locked(conn, dicom_instances, sop_instance_uid=parsed.sop_instance_uid)
        if existing is not None:
            if existing["org_id"] != principal.org_id:
                raise DuplicateInstance("Another organization holds this SOP Instance UID.")
            if existing["blob_digest"] == digest:
                return self._result("duplicate", parsed, digest, size), None
            if self.duplicate_policy == "reject":
                raise DuplicateInstance()
            if self.duplicate_policy == "keep":
                log.info("dicom duplicate SOP instance kept (policy keep)")
                return self._result("kept", parsed, digest, size), None
            old_digest = str(existing["blob_digest"])
            old_study = (
                conn.execute(
                    select(dicom_studies).where(dicom_studies.c.pk == existing["study_pk"])
                )
                .mappings()
                .first()
            )
            remove_instance(conn, existing, now)
            if old_study is not None and old_study["study_uid"] != parsed.study_uid:
                self._study_changed(conn, old_study, now, gone_check=True)
        _patient, study, series, coerced = upsert_hierarchy(
            conn, principal.org_id, parsed, self.patient_policy, now
        )
        insert_instance(conn, study, series, values, now, self._study_work(conn, study, now))
        self.jobs.enqueue(
            events.INSTANCE_STORED,
            {
                "study": parsed.study_uid,
                "series": parsed.series_uid,
                "instance": parsed.sop_instance_uid,
                "sop_class": parsed.sop_class_uid,
                "org": principal.org_id,
            },
            conn=conn,
            tenant=principal.org_id,
        )
        self.audit.append(
            conn,
            [
                self._event(
                    principal,
                    "U" if old_digest else "C",
                    _entity(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid),
                    "replace instance" if old_digest else "store instance",
                    patient_key=study["patient_key"],
                    detail={"size": size, "transfer_syntax": parsed.transfer_syntax_uid},
                )
            ],
        )
        outcome = "replaced" if old_digest else "stored"
        return self._result(outcome, parsed, digest, size, coerced), old_digest

    @staticmethod
    def _result(
        outcome: str, parsed: ParsedInstance, digest: str, size: int, coerced: bool = False
    ) -> StoreResult:
        return StoreResult(
            outcome,
            parsed.sop_class_uid,
            parsed.sop_instance_uid,
            parsed.study_uid,
            parsed.series_uid,
            digest,
            size,
            coerced,
        )

    def _study_changed(
        self, conn: Connection, study: RowMapping, now: datetime, gone_check: bool = False
    ) -> None:
        """Queue the ImagingStudy sync and the stability check of a changed study."""
        s = dicom_studies.c
        current = conn.execute(select(dicom_studies).where(s.pk == study["pk"])).mappings().first()
        if current is None:  # the study is gone: its ImagingStudy goes too
            if self.fhir_sync and study["fhir_id"]:
                self.jobs.enqueue(
                    events.FHIR_SYNC,
                    {
                        "study": study["study_uid"],
                        "org": study["org_id"],
                        "fhir_id": study["fhir_id"],
                    },
                    conn=conn,
                    tenant=str(study["org_id"]),
                )
            return
        values: dict[str, Any] = {"last_instance_at": now}
        if self.fhir_sync and not current["fhir_sync_pending"]:
            values["fhir_sync_pending"] = True
            self.jobs.enqueue(
                events.FHIR_SYNC,
                {"study": current["study_uid"], "org": current["org_id"]},
                conn=conn,
                tenant=str(current["org_id"]),
            )
        if current["stable_check_at"] is None and not gone_check:
            due = now + self.stable
            values["stable_check_at"] = due
            self.jobs.enqueue(
                events.STABLE_CHECK,
                {"study": current["study_uid"]},
                conn=conn,
                run_at=due,
                tenant=str(current["org_id"]),
            )
        conn.execute(update(dicom_studies).where(s.pk == current["pk"]).values(**values))

    def _study_work(self, conn: Connection, study: RowMapping, now: datetime) -> dict[str, Any]:
        """:meth:`_study_changed` for a store: ``study`` is the row locked in this
        transaction, and the columns to set go into the statistics UPDATE."""
        values: dict[str, Any] = {"last_instance_at": now}
        org = str(study["org_id"])
        if self.fhir_sync and not study["fhir_sync_pending"]:
            values["fhir_sync_pending"] = True
            self.jobs.enqueue(
                events.FHIR_SYNC, {"study": study["study_uid"], "org": org}, conn=conn, tenant=org
            )
        if study["stable_check_at"] is None:
            due = now + self.stable
            values["stable_check_at"] = due
            self.jobs.enqueue(
                events.STABLE_CHECK,
                {"study": study["study_uid"]},
                conn=conn,
                run_at=due,
                tenant=org,
            )
        return values

    def _collect_blobs(self, digests: list[str]) -> None:
        """Delete blobs that no instance row references any more."""
        for digest in set(digests):
            with self.db.read() as conn:
                used = conn.execute(
                    select(dicom_instances.c.pk).where(dicom_instances.c.blob_digest == digest)
                ).first()
            if used is None:
                self.blobs.delete(digest)

    # -- queries -----------------------------------------------------------------------
    def _filter(
        self, principal: Principal, purpose: Purpose | None
    ) -> tuple[Decision, RecordFilter]:
        decision = self.authorize(principal, Interaction.SEARCH, purpose)
        return decision, decision.require()

    def find(
        self,
        principal: Principal,
        level: Level | str,
        identifier: Mapping[str, QueryValue],
        *,
        limit: int | None = None,
        offset: int = 0,
        purpose: Purpose | None = None,
        audit: bool = True,
        combined_datetime: bool = False,
    ) -> list[Match]:
        """PS3.4 C.4.1 / PS3.18 10.6: the entities at ``level`` that match
        (``combined_datetime``: PS3.4 C.2.2.2.5.1, see :class:`~salus.dicom.matching.Matcher`)."""
        level = Level(level)
        decision, flt = self._filter(principal, purpose)
        with self.db.read() as conn:
            matches = self.planner.find(
                conn,
                flt,
                level,
                identifier,
                limit=limit,
                offset=offset,
                combined_datetime=combined_datetime,
            )
        if audit:
            patients = {m.patient_key for m in matches}
            self.audit.record(
                [
                    self._event(
                        principal,
                        "E",
                        f"dicom query {level.value}",
                        "query",
                        patient_key=next(iter(patients)) if len(patients) == 1 else None,
                        purpose=decision.purpose,
                        detail={"matches": len(matches)},
                    )
                ]
            )
        return matches

    def instances(
        self,
        principal: Principal,
        level: Level | str,
        identifier: Mapping[str, QueryValue],
        *,
        purpose: Purpose | None = None,
    ) -> list[InstanceRef]:
        """The instances under the matching entities (C-MOVE/C-GET, WADO-RS); audited
        as one read per study."""
        level = Level(level)
        decision, flt = self._filter(principal, purpose)
        with self.db.read() as conn:
            refs = self.planner.instances(conn, flt, level, identifier)
        studies: dict[str, str | None] = {}
        for ref in refs:
            studies.setdefault(ref.study_uid, ref.patient_key)
        if studies:
            self.audit.record(
                [
                    self._event(
                        principal,
                        "R",
                        _entity(study),
                        "retrieve",
                        patient_key=key,
                        purpose=decision.purpose,
                        detail={"instances": sum(1 for r in refs if r.study_uid == study)},
                    )
                    for study, key in studies.items()
                ]
            )
        return refs

    def read(self, ref: InstanceRef) -> bytes | bytearray:
        """The Part-10 file of an instance as received (already authorized ``ref``)."""
        return self.blobs.get(ref.digest)

    def metadata(
        self,
        principal: Principal,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        purpose: Purpose | None = None,
    ) -> list[dict[str, Any]]:
        """DICOM JSON of the instances of a study, series or instance (PS3.18 10.4.1.2)."""
        return [
            json.loads(body)
            for body in self.metadata_json(principal, study, series, instance, purpose=purpose)
        ]

    def metadata_json(
        self,
        principal: Principal,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        purpose: Purpose | None = None,
    ) -> list[bytes]:
        """:meth:`metadata` as each instance's stored JSON text (UTF-8, compact), not
        parsed: what WADO-RS metadata sends, joined into an array."""
        decision, flt = self._filter(principal, purpose)
        identifier: dict[str, QueryValue] = {"StudyInstanceUID": study}
        level = Level.STUDY
        if series is not None:
            identifier["SeriesInstanceUID"] = series
            level = Level.SERIES
        if instance is not None:
            identifier["SOPInstanceUID"] = instance
            level = Level.IMAGE
        with self.db.read() as conn:
            rows = self.planner.metadata_rows(conn, flt, level, identifier)
        if not rows:
            raise NotFound("No such study, series or instance here.")
        self.audit.record(
            [
                self._event(
                    principal,
                    "R",
                    _entity(study, series, instance),
                    "metadata",
                    patient_key=rows[0][3],
                    purpose=decision.purpose,
                    detail={"instances": len(rows)},
                )
            ]
        )
        return [self._open_raw(sop, digest, body) for sop, digest, body, _key in rows]

    # -- deletion ----------------------------------------------------------------------
    def delete(
        self,
        principal: Principal,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> int:
        """Delete a study, series or instance (own organization only); returns the
        number of instances removed. Blobs no longer referenced are deleted after commit."""
        self.authorize(principal, Interaction.DELETE)
        now = self.clock()
        i, r, s = dicom_instances.c, dicom_series.c, dicom_studies.c
        query = (
            select(dicom_instances)
            .join(dicom_series, r.pk == i.series_pk)
            .join(dicom_studies, s.pk == i.study_pk)
            .where(s.study_uid == study, s.org_id == principal.org_id)
        )
        if series is not None:
            query = query.where(r.series_uid == series)
        if instance is not None:
            query = query.where(i.sop_instance_uid == instance)
        with self.db.write() as conn:
            study_row = (
                conn.execute(
                    select(dicom_studies)
                    .where(s.study_uid == study, s.org_id == principal.org_id)
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            rows = conn.execute(query.with_for_update()).mappings().all()
            if study_row is None or not rows:
                raise NotFound("No such study, series or instance here.")
            for row in rows:
                remove_instance(conn, row, now)
            self._study_changed(conn, study_row, now, gone_check=True)
            self.audit.append(
                conn,
                [
                    self._event(
                        principal,
                        "D",
                        _entity(study, series, instance),
                        "delete",
                        patient_key=study_row["patient_key"],
                        detail={"instances": len(rows)},
                    )
                ],
            )
        self._collect_blobs([str(row["blob_digest"]) for row in rows])
        return len(rows)

    def study_ref(self, conn: Connection, study_uid: str) -> RowMapping | None:
        return (
            conn.execute(select(dicom_studies).where(dicom_studies.c.study_uid == study_uid))
            .mappings()
            .first()
        )


def _entity(study: str, series: str | None = None, instance: str | None = None) -> str:
    """The audit entity of a DICOM object, in DICOMweb path form."""
    text = f"dicom:studies/{study}"
    if series:
        text += f"/series/{series}"
    if instance:
        text += f"/instances/{instance}"
    return text
