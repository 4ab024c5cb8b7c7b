"""Query plans over the image index: one SQL statement per request.

Every statement joins the queried level up to its study and patient rows,
adds the matching conditions of :mod:`salus.dicom.matching` and the policy
engine's :class:`~salus.security.policy.RecordFilter` on the study's
organization and linked patient, so a C-FIND, QIDO-RS, C-MOVE, C-GET or
WADO-RS request never sees a row first and checks it afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, exists, func, select
from sqlalchemy.engine import Connection

from salus.db.tables_dicom import (
    dicom_instances,
    dicom_patients,
    dicom_series,
    dicom_series_requests,
    dicom_studies,
)
from salus.dicom.matching import KEYS, Level, Matcher, QueryValue
from salus.security.policy import RecordColumns, RecordFilter

__all__ = ["STUDY_COLUMNS", "InstanceRef", "Match", "QueryPlanner"]

#: Where the policy filter looks on a study row (a constant: the filter caches by identity).
STUDY_COLUMNS = RecordColumns(org=dicom_studies.c.org_id, patient=dicom_studies.c.patient_key)

P, S, R, I = dicom_patients.c, dicom_studies.c, dicom_series.c, dicom_instances.c  # noqa: E741


@dataclass(frozen=True, slots=True)
class Match:
    """One entity that matched: its attributes by keyword (``None`` when empty)."""

    level: Level
    attributes: dict[str, Any]
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    patient_key: str | None
    org_id: str | None


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """Where a stored instance is, without its bytes."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    digest: str
    size: int
    dataset_offset: int
    patient_key: str | None
    org_id: str


def _from(level: Level) -> Any:
    if level is Level.PATIENT:
        return dicom_patients
    studies = dicom_studies.join(dicom_patients, P.pk == S.patient_pk)
    if level is Level.STUDY:
        return studies
    series = dicom_series.join(studies, S.pk == R.study_pk)
    if level is Level.SERIES:
        return series
    return dicom_instances.join(series, R.pk == I.series_pk)


_ORDER = {Level.PATIENT: P.pk, Level.STUDY: S.pk, Level.SERIES: R.pk, Level.IMAGE: I.pk}


class QueryPlanner:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def _visible(self, flt: RecordFilter, level: Level) -> Any:
        if level is Level.PATIENT:
            return exists(select(S.pk).where(S.patient_pk == P.pk, flt.where(STUDY_COLUMNS)))
        return flt.where(STUDY_COLUMNS)

    def _where(
        self,
        flt: RecordFilter,
        level: Level,
        identifier: Mapping[str, QueryValue],
        combined_datetime: bool = False,
    ) -> list[Any]:
        matcher = Matcher(level, self.dialect, combined_datetime)
        return [self._visible(flt, level), *matcher.conditions(identifier)]

    def find(
        self,
        conn: Connection,
        flt: RecordFilter,
        level: Level,
        identifier: Mapping[str, QueryValue],
        *,
        limit: int | None = None,
        offset: int = 0,
        combined_datetime: bool = False,
    ) -> list[Match]:
        keys = [k for k in KEYS.values() if k.level.depth <= level.depth and k.column is not None]
        columns: list[Any] = [k.column.label(k.keyword) for k in keys]
        extra: list[Any] = []
        if level is Level.PATIENT:
            extra = [
                select(func.count())
                .select_from(dicom_studies)
                .where(S.patient_pk == P.pk)
                .scalar_subquery()
                .label("NumberOfPatientRelatedStudies"),
                select(func.coalesce(func.sum(S.num_series), 0))
                .where(S.patient_pk == P.pk)
                .scalar_subquery()
                .label("NumberOfPatientRelatedSeries"),
                select(func.coalesce(func.sum(S.num_instances), 0))
                .where(S.patient_pk == P.pk)
                .scalar_subquery()
                .label("NumberOfPatientRelatedInstances"),
                P.patient_key.label("_patient_key"),
                P.org_id.label("_org"),
            ]
        else:
            extra = [S.patient_key.label("_patient_key"), S.org_id.label("_org")]
            if level.depth >= Level.STUDY.depth:
                extra.append(S.accession_issuer.label("_accession_issuer"))
            if level.depth >= Level.SERIES.depth:
                extra.append(R.pk.label("_series_pk"))
        query: Select[Any] = (
            select(*columns, *extra)
            .select_from(_from(level))
            .where(*self._where(flt, level, identifier, combined_datetime))
            .order_by(_ORDER[level])
        )
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        matches = []
        rows = conn.execute(query, flt.params()).mappings().all()
        requests = self._requests(conn, [r["_series_pk"] for r in rows if "_series_pk" in r])
        for row in rows:
            attributes = {
                k: (None if row[k] == "" else row[k]) for k in row.keys() if not k.startswith("_")
            }
            if "_series_pk" in row:
                attributes["RequestAttributesSequence"] = requests.get(row["_series_pk"], [])
            issuer = row.get("_accession_issuer")
            if level.depth >= Level.STUDY.depth:
                attributes["IssuerOfAccessionNumberSequence"] = (
                    [{"LocalNamespaceEntityID": issuer}] if issuer else []
                )
            matches.append(
                Match(
                    level,
                    attributes,
                    attributes.get("StudyInstanceUID"),
                    attributes.get("SeriesInstanceUID"),
                    attributes.get("SOPInstanceUID"),
                    row["_patient_key"],
                    row["_org"],
                )
            )
        return matches

    @staticmethod
    def _requests(conn: Connection, series_pks: list[int]) -> dict[int, list[dict[str, str]]]:
        """The Request Attributes Sequence items of each series (one query)."""
        out: dict[int, list[dict[str, str]]] = {}
        if not series_pks:
            return out
        q = dicom_series_requests.c
        for start in range(0, len(series_pks), 500):
            batch = list(dict.fromkeys(series_pks[start : start + 500]))
            for pk, procedure, step in conn.execute(
                select(q.series_pk, q.requested_procedure_id, q.scheduled_step_id)
                .where(q.series_pk.in_(batch))
                .order_by(q.pk)
            ).all():
                item = {"RequestedProcedureID": procedure, "ScheduledProcedureStepID": step}
                out.setdefault(int(pk), []).append({k: v for k, v in item.items() if v})
        return out

    def instances(
        self,
        conn: Connection,
        flt: RecordFilter,
        level: Level,
        identifier: Mapping[str, QueryValue],
    ) -> list[InstanceRef]:
        """Every instance under the entities of ``level`` that match (retrieval)."""
        relevant = {
            k: v
            for k, v in identifier.items()
            if (key := KEYS.get(k)) is not None and key.level.depth <= level.depth
        }
        query = (
            select(
                S.study_uid,
                R.series_uid,
                I.sop_instance_uid,
                I.sop_class_uid,
                I.transfer_syntax_uid,
                I.blob_digest,
                I.size,
                I.dataset_offset,
                S.patient_key,
                S.org_id,
            )
            .select_from(_from(Level.IMAGE))
            .where(*self._where(flt, Level.IMAGE, relevant))
            .order_by(S.pk, R.series_number, R.pk, I.instance_number, I.pk)
        )
        return [
            InstanceRef(*(row[:7]), int(row[7]), row[8], row[9])
            for row in conn.execute(query, flt.params()).all()
        ]

    def metadata_rows(
        self,
        conn: Connection,
        flt: RecordFilter,
        level: Level,
        identifier: Mapping[str, QueryValue],
    ) -> list[tuple[str, str, bytes, str | None]]:
        """(SOPInstanceUID, digest, sealed metadata, patient key) of matching instances."""
        query = (
            select(I.sop_instance_uid, I.blob_digest, I.metadata_json, S.patient_key)
            .select_from(_from(Level.IMAGE))
            .where(*self._where(flt, Level.IMAGE, identifier))
            .order_by(R.series_number, R.pk, I.instance_number, I.pk)
        )
        return [
            (str(a), str(b), bytes(c), d) for a, b, c, d in conn.execute(query, flt.params()).all()
        ]
