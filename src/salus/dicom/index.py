"""Index writes: patients, studies, series and instances in one transaction.

Rows are found with a locking ``SELECT`` or, when missing, created with
``INSERT … ON CONFLICT DO NOTHING`` then selected again, so two associations
storing the first instances of one study at once meet on the same rows
(PostgreSQL), and SQLite's single writer needs nothing more. Study and
series statistics (PS3.4 C.3.4: number of related series and instances,
modalities in study) are updated in the same transaction as the instance
row, so they are never stale.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from salus.db.tables_dicom import (
    dicom_instances,
    dicom_patients,
    dicom_series,
    dicom_series_requests,
    dicom_studies,
)
from salus.dicom.parse import ParsedInstance
from salus.errors import Conflict

__all__ = [
    "PatientConflict",
    "StudyOwnedElsewhere",
    "insert_instance",
    "remove_instance",
    "upsert_hierarchy",
]

log = logging.getLogger("salus.dicom")

_PATIENT_IDENTITY = ("patient_name", "birth_date", "sex")


class PatientConflict(Conflict):
    """PS3.4 B.2.3 0xA900: the patient of an instance contradicts the stored one."""

    code = "dicom-patient-conflict"

    @classmethod
    def default_message(cls) -> str:
        return "The patient's name, birth date or sex differ from the stored patient."


class StudyOwnedElsewhere(Conflict):
    """An instance joins a study (or series) that another organization or patient holds."""

    code = "dicom-study-conflict"

    @classmethod
    def default_message(cls) -> str:
        return "The study or series already belongs to another organization or patient."


#: Prebuilt ``INSERT … ON CONFLICT DO NOTHING`` per (table, dialect), executed with a
#: parameter dict: building a statement around literal values on every store costs
#: more than running it.
_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any], keys: list[str]) -> None:
    dialect = conn.dialect.name
    statement = _INSERT_IGNORE.get((table.name, dialect))
    if statement is None:
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(table).on_conflict_do_nothing(index_elements=keys)
        _INSERT_IGNORE[(table.name, dialect)] = statement
    conn.execute(statement, values)


#: Prebuilt locking ``SELECT`` of one row by its key columns, per (table, keys): a
#: statement object built once keeps its cache key and compiled form.
_SELECT_LOCKED: dict[tuple[str, tuple[str, ...]], Any] = {}


def _select_locked(table: Any, keys: tuple[str, ...]) -> Any:
    statement = _SELECT_LOCKED.get((table.name, keys))
    if statement is None:
        statement = (
            select(table)
            .where(*[table.c[key] == bindparam(f"k_{key}") for key in keys])
            .with_for_update()
        )
        _SELECT_LOCKED[(table.name, keys)] = statement
    return statement


def select_locked(conn: Connection, table: Any, **where: Any) -> RowMapping | None:
    """The row of ``table`` whose columns equal ``where``, locked for this transaction."""
    statement = _select_locked(table, tuple(where))
    params = {f"k_{key}": value for key, value in where.items()}
    return conn.execute(statement, params).mappings().first()


#: Prebuilt ``UPDATE … WHERE pk = :pk`` per (table, columns set, columns incremented).
_UPDATE_BY_PK: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}


def update_by_pk(
    conn: Connection,
    table: Any,
    pk: int,
    values: dict[str, Any],
    increments: tuple[str, ...] = (),
) -> None:
    """``UPDATE table SET <values>, <each of increments> = it + 1 WHERE pk = :pk`` with a
    statement built once per shape (most stores run the same two or three shapes)."""
    names = tuple(values)
    shape = (table.name, names, increments)
    statement = _UPDATE_BY_PK.get(shape)
    if statement is None:
        sets: dict[str, Any] = {name: bindparam(f"v_{name}") for name in names}
        sets.update({name: table.c[name] + 1 for name in increments})
        statement = update(table).where(table.c.pk == bindparam("v__pk")).values(**sets)
        _UPDATE_BY_PK[shape] = statement
    params = {f"v_{name}": value for name, value in values.items()}
    params["v__pk"] = pk
    conn.execute(statement, params)


def _found_or_created(
    conn: Connection, table: Any, where: dict[str, Any], values: dict[str, Any]
) -> RowMapping:
    """The locked row ``where`` selects, inserted from ``values`` first when missing
    (most instances join a patient, study and series that exist: one statement)."""
    row = select_locked(conn, table, **where)
    if row is not None:
        return row
    _insert_ignore(conn, table, values, list(where))
    row = select_locked(conn, table, **where)
    assert row is not None  # noqa: S101 - inserted just before
    return row


def _patient(
    conn: Connection, org_id: str, parsed: ParsedInstance, policy: str, now: datetime
) -> tuple[RowMapping, bool]:
    """The locked patient row, and whether the index kept values that differ from
    the instance's (policy ``keep``: PS3.4 B.2.3 0xB000, coercion)."""
    values = parsed.patient
    row = _found_or_created(
        conn,
        dicom_patients,
        {"org_id": org_id, "patient_id": values["patient_id"], "issuer": values["issuer"]},
        {**values, "org_id": org_id, "patient_key": None, "created_at": now, "updated_at": now},
    )
    differs = [
        name
        for name in _PATIENT_IDENTITY
        if values.get(name) and row[name] and values.get(name) != row[name]
    ]
    missing = {n: values[n] for n in _PATIENT_IDENTITY if values.get(n) and not row[n]}
    if differs:
        # Which attributes differ and the row's key, never the values (patient data).
        log.warning(
            "dicom patient identity conflict (policy %s): patient row %s differs in %s",
            policy,
            row["pk"],
            ",".join(differs),
        )
        if policy == "reject":
            raise PatientConflict()
        if policy == "update":
            missing.update({n: values[n] for n in differs})
    if missing:
        if "patient_name" in missing:
            missing["patient_name_norm"] = values["patient_name_norm"]
        update_by_pk(conn, dicom_patients, row["pk"], {**missing, "updated_at": now})
    return row, bool(differs) and policy == "keep"


def upsert_hierarchy(
    conn: Connection, org_id: str, parsed: ParsedInstance, patient_policy: str, now: datetime
) -> tuple[RowMapping, RowMapping, RowMapping, bool]:
    """Find or create (and lock) the patient, study and series of an instance; the
    last value says whether the patient's indexed identity differs from the
    instance's (kept by policy)."""
    patient, coerced = _patient(conn, org_id, parsed, patient_policy, now)
    study = _found_or_created(
        conn,
        dicom_studies,
        {"study_uid": parsed.study_uid},
        {
            **parsed.study,
            "study_uid": parsed.study_uid,
            "patient_pk": patient["pk"],
            "org_id": org_id,
            "patient_key": patient["patient_key"],
            "modalities": None,
            "num_series": 0,
            "num_instances": 0,
            "fhir_sync_pending": False,
            "last_instance_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    if study["org_id"] != org_id or study["patient_pk"] != patient["pk"]:
        raise StudyOwnedElsewhere()
    changed = {k: v for k, v in parsed.study.items() if v is not None and study[k] != v}
    if changed:
        update_by_pk(conn, dicom_studies, study["pk"], changed)
    series = _found_or_created(
        conn,
        dicom_series,
        {"series_uid": parsed.series_uid},
        {
            **parsed.series,
            "series_uid": parsed.series_uid,
            "study_pk": study["pk"],
            "org_id": org_id,
            "num_instances": 0,
            "created_at": now,
            "updated_at": now,
        },
    )
    if series["study_pk"] != study["pk"]:
        raise StudyOwnedElsewhere("The series already belongs to another study.")
    for procedure, step in parsed.requests:
        _insert_ignore(
            conn,
            dicom_series_requests,
            {
                "series_pk": series["pk"],
                "requested_procedure_id": procedure,
                "scheduled_step_id": step,
            },
            ["series_pk", "requested_procedure_id", "scheduled_step_id"],
        )
    changed = {k: v for k, v in parsed.series.items() if v is not None and series[k] != v}
    if changed:
        update_by_pk(conn, dicom_series, series["pk"], changed)
    return patient, study, series, coerced


def refresh_statistics(
    conn: Connection, study_pk: int, series_pk: int | None, now: datetime
) -> None:
    """Recount a series and its study (PS3.4 C.3.4 NumberOfStudyRelated…, ModalitiesInStudy)."""
    i, r, s = dicom_instances.c, dicom_series.c, dicom_studies.c
    if series_pk is not None:
        count = conn.execute(
            select(func.count()).select_from(dicom_instances).where(i.series_pk == series_pk)
        ).scalar_one()
        conn.execute(
            update(dicom_series)
            .where(r.pk == series_pk)
            .values(num_instances=int(count), updated_at=now)
        )
    rows = conn.execute(
        select(r.modality, r.num_instances).where(r.study_pk == study_pk).order_by(r.pk)
    ).all()
    modalities: list[str] = []
    for modality, _count in rows:
        if modality and modality not in modalities:
            modalities.append(modality)
    conn.execute(
        update(dicom_studies)
        .where(s.pk == study_pk)
        .values(
            num_series=len(rows),
            num_instances=sum(int(c) for _m, c in rows),
            modalities="\\".join(modalities)[:200] or None,
            updated_at=now,
        )
    )


_INSERT_INSTANCE = dicom_instances.insert().returning(dicom_instances.c.pk)


def insert_instance(
    conn: Connection,
    study: RowMapping,
    series: RowMapping,
    values: dict[str, Any],
    now: datetime,
    study_values: dict[str, Any] | None = None,
) -> int:
    """Insert the instance row and bring the counts up to date; returns its pk.

    ``study`` and ``series`` are the rows :func:`upsert_hierarchy` locked in this
    transaction, so the statistics move by increments (PS3.4 C.3.4: a series
    without instances is new to its study); ``study_values`` are more columns of
    the study row to set in the same UPDATE."""
    pk = conn.execute(
        _INSERT_INSTANCE,
        {
            **values,
            "series_pk": series["pk"],
            "study_pk": study["pk"],
            "org_id": study["org_id"],
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    update_by_pk(conn, dicom_series, series["pk"], {"updated_at": now}, ("num_instances",))
    changes: dict[str, Any] = {"updated_at": now, **(study_values or {})}
    increments: tuple[str, ...] = ("num_instances",)
    if not series["num_instances"]:  # the series is new to the study
        increments = ("num_instances", "num_series")
        modalities = [m for m in str(study["modalities"] or "").split("\\") if m]
        modality = series["modality"]
        if modality and modality not in modalities:
            changes["modalities"] = "\\".join([*modalities, modality])[:200]
    update_by_pk(conn, dicom_studies, study["pk"], changes, increments)
    return int(pk)


def remove_instance(conn: Connection, row: RowMapping, now: datetime) -> None:
    """Delete one instance row; empty series and studies (and patients) go with it."""
    i, r, s, p = dicom_instances.c, dicom_series.c, dicom_studies.c, dicom_patients.c
    conn.execute(delete(dicom_instances).where(i.pk == row["pk"]))
    series_left = conn.execute(
        select(func.count()).select_from(dicom_instances).where(i.series_pk == row["series_pk"])
    ).scalar_one()
    if not series_left:
        q = dicom_series_requests.c
        conn.execute(delete(dicom_series_requests).where(q.series_pk == row["series_pk"]))
        conn.execute(delete(dicom_series).where(r.pk == row["series_pk"]))
    study_pk = int(row["study_pk"])
    study_left = conn.execute(
        select(func.count()).select_from(dicom_series).where(r.study_pk == study_pk)
    ).scalar_one()
    if study_left:
        refresh_statistics(conn, study_pk, int(row["series_pk"]) if series_left else None, now)
        return
    patient_pk = conn.execute(select(s.patient_pk).where(s.pk == study_pk)).scalar_one()
    conn.execute(delete(dicom_studies).where(s.pk == study_pk))
    others = conn.execute(
        select(func.count()).select_from(dicom_studies).where(s.patient_pk == patient_pk)
    ).scalar_one()
    if not others:
        conn.execute(delete(dicom_patients).where(p.pk == patient_pk))
