"""Attribute matching of C-FIND and QIDO-RS, translated to SQL (PS3.4 C.2.2.2).

Each supported key names its level, its column and how it matches:

* **single value** (C.2.2.2.1): equality; PN case-insensitively (the index
  keeps an upper-cased copy, :func:`~salus.dicom.parse.norm_pn`);
* **list of UIDs** (C.2.2.2.2) and, for other VRs, multiple values
  (C.2.2.2.8): backslash-separated values, any of which may match;
* **universal** (C.2.2.2.3): an empty value matches everything and asks for
  the attribute to be returned;
* **wild card** (C.2.2.2.4): ``*`` any run, ``?`` one character (SQL ``LIKE``
  with escapes on PostgreSQL, ``GLOB`` on SQLite, which is case-sensitive as
  the standard wants for non-PN values);
* **range** (C.2.2.2.5): ``a-b``, ``-b``, ``a-`` for DA, TM and DT; times
  are compared on a padded ``HHMMSS.FFFFFF`` column, and a bound that stops
  early covers the whole hour or minute it names; **combined date-time
  range matching** (C.2.2.2.5.1) of StudyDate/StudyTime and the Performed
  Procedure Step start date/time when asked for (:class:`Matcher`);
* **sequence** (C.2.2.2.6): one item whose keys match against the same
  entity (IssuerOfAccessionNumberSequence > LocalNamespaceEntityID), or an
  item of the series' Request Attributes Sequence (> RequestedProcedureID,
  ScheduledProcedureStepID; ``dicom_series_requests``); an empty sequence is
  universal.

Keys of a level below the queried one (relational queries, C.4.1.2.2.1)
become ``EXISTS`` sub-queries; keys that Salus does not index are ignored
for matching (C.2.2.1.1 allows that for optional keys) and returned empty.
Nothing is filtered in Python.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select

from salus.db.tables_dicom import (
    dicom_instances,
    dicom_patients,
    dicom_series,
    dicom_series_requests,
    dicom_studies,
)
from salus.dicom.parse import norm_pn, time_key
from salus.errors import InvalidInput

__all__ = [
    "KEYS",
    "Key",
    "Level",
    "COMBINED_PAIRS",
    "Matcher",
    "QueryValue",
    "combined_condition",
    "condition_for",
    "like_pattern",
]


class Level(StrEnum):
    """QueryRetrieveLevel (0008,0052), PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}

#: A key's value in an identifier: text (possibly empty), or sequence items.
QueryValue = str | list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class Key:
    keyword: str
    level: Level
    column: Any  # a Column of one of the dicom_* tables
    kind: str  # UI, DA, TM, PN, STR, INT, MOD (ModalitiesInStudy), SQ
    #: The column range matching compares on (TM: the padded key column).
    match_column: Any = None
    vr: str = "LO"


def _k(keyword: str, level: Level, column: Any, kind: str, vr: str, match: Any = None) -> Key:
    return Key(keyword, level, column, kind, match, vr)


P, S, R, I = dicom_patients.c, dicom_studies.c, dicom_series.c, dicom_instances.c  # noqa: E741
KEYS: dict[str, Key] = {
    key.keyword: key
    for key in (
        _k("PatientID", Level.PATIENT, P.patient_id, "STR", "LO"),
        _k("IssuerOfPatientID", Level.PATIENT, P.issuer, "STR", "LO"),
        _k("PatientName", Level.PATIENT, P.patient_name, "PN", "PN", P.patient_name_norm),
        _k("PatientBirthDate", Level.PATIENT, P.birth_date, "DA", "DA"),
        _k("PatientSex", Level.PATIENT, P.sex, "STR", "CS"),
        _k("StudyInstanceUID", Level.STUDY, S.study_uid, "UI", "UI"),
        _k("StudyDate", Level.STUDY, S.study_date, "DA", "DA"),
        _k("StudyTime", Level.STUDY, S.study_time, "TM", "TM", S.study_time_key),
        _k("AccessionNumber", Level.STUDY, S.accession_number, "STR", "SH"),
        _k(
            "ReferringPhysicianName",
            Level.STUDY,
            S.referring_physician_name,
            "PN",
            "PN",
            S.referring_physician_name_norm,
        ),
        _k("StudyID", Level.STUDY, S.study_id, "STR", "SH"),
        _k("StudyDescription", Level.STUDY, S.study_description, "STR", "LO"),
        _k("ModalitiesInStudy", Level.STUDY, S.modalities, "MOD", "CS"),
        _k("NumberOfStudyRelatedSeries", Level.STUDY, S.num_series, "COUNT", "IS"),
        _k("NumberOfStudyRelatedInstances", Level.STUDY, S.num_instances, "COUNT", "IS"),
        _k("IssuerOfAccessionNumberSequence", Level.STUDY, None, "SQ", "SQ"),
        _k("SeriesInstanceUID", Level.SERIES, R.series_uid, "UI", "UI"),
        _k("Modality", Level.SERIES, R.modality, "STR", "CS"),
        _k("SeriesNumber", Level.SERIES, R.series_number, "INT", "IS"),
        _k("SeriesDescription", Level.SERIES, R.series_description, "STR", "LO"),
        _k("BodyPartExamined", Level.SERIES, R.body_part_examined, "STR", "CS"),
        _k("Laterality", Level.SERIES, R.laterality, "STR", "CS"),
        _k("SeriesDate", Level.SERIES, R.series_date, "DA", "DA"),
        _k("SeriesTime", Level.SERIES, R.series_time, "TM", "TM"),
        _k("PerformedProcedureStepStartDate", Level.SERIES, R.pps_start_date, "DA", "DA"),
        _k(
            "PerformedProcedureStepStartTime",
            Level.SERIES,
            R.pps_start_time,
            "TM",
            "TM",
            R.pps_start_time_key,
        ),
        _k("NumberOfSeriesRelatedInstances", Level.SERIES, R.num_instances, "COUNT", "IS"),
        _k("RequestAttributesSequence", Level.SERIES, None, "SQ", "SQ"),
        _k("SOPInstanceUID", Level.IMAGE, I.sop_instance_uid, "UI", "UI"),
        _k("SOPClassUID", Level.IMAGE, I.sop_class_uid, "UI", "UI"),
        _k("InstanceNumber", Level.IMAGE, I.instance_number, "INT", "IS"),
        _k("Rows", Level.IMAGE, I.rows, "INT", "US"),
        _k("Columns", Level.IMAGE, I.columns, "INT", "US"),
        _k("NumberOfFrames", Level.IMAGE, I.number_of_frames, "INT", "IS"),
        _k("ContentDate", Level.IMAGE, I.content_date, "DA", "DA"),
        _k("ContentTime", Level.IMAGE, I.content_time, "TM", "TM"),
        _k("AvailableTransferSyntaxUID", Level.IMAGE, I.transfer_syntax_uid, "UI", "UI"),
    )
}

#: Item keys of the sequences that are matched (C.2.2.2.6), to their column.
Q = dicom_series_requests.c
SEQUENCE_ITEMS: dict[str, dict[str, Any]] = {
    "IssuerOfAccessionNumberSequence": {"LocalNamespaceEntityID": S.accession_issuer},
    "RequestAttributesSequence": {
        "RequestedProcedureID": Q.requested_procedure_id,
        "ScheduledProcedureStepID": Q.scheduled_step_id,
    },
}
#: Sequences whose items live in a table of their own, and how it joins its entity.
SEQUENCE_TABLES: dict[str, tuple[Any, Any]] = {
    "RequestAttributesSequence": (dicom_series_requests, Q.series_pk == R.pk),
}

#: The table of each level and how a row of it is tied to its parent.
TABLES = {
    Level.PATIENT: dicom_patients,
    Level.STUDY: dicom_studies,
    Level.SERIES: dicom_series,
    Level.IMAGE: dicom_instances,
}


def like_pattern(value: str, dialect: str) -> str:
    """A DICOM wild card value (``*``, ``?``) as a LIKE (``\\`` escapes) or GLOB pattern."""
    if dialect == "sqlite":
        out = []
        for ch in value:
            if ch == "*":
                out.append("*")
            elif ch == "?":
                out.append("?")
            elif ch in "[]":
                out.append(f"[{ch}]")
            else:
                out.append(ch)
        return "".join(out)
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _wild(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    pattern = like_pattern(value, dialect)
    if dialect == "sqlite":
        result: ColumnElement[bool] = column.op("GLOB")(pattern)
        return result
    return column.like(pattern, escape="\\")  # type: ignore[no-any-return]


def _has_wild(value: str) -> bool:
    return "*" in value or "?" in value


_DATE = re.compile(r"^\d{8}$")


def _date(value: str) -> str:
    text = value.strip().replace(".", "")  # ACR-NEMA YYYY.MM.DD
    if not _DATE.match(text):
        raise InvalidInput("A date key is not YYYYMMDD or a YYYYMMDD range.")
    return text


def _time_low(value: str) -> str:
    key = time_key(value)
    if key is None:
        raise InvalidInput("A time key is not HHMMSS.FFFFFF or a range of them.")
    return key


def _time_high(value: str) -> str:
    text = value.strip().replace(":", "")
    key = _time_low(text)
    digits = text.split(".")[0]
    if "." in text:  # fraction given: pad it with nines
        frac = text.split(".")[1]
        return key[:7] + frac + "9" * (6 - len(frac))
    if len(digits) == 2:
        return key[:2] + "5959.999999"
    if len(digits) == 4:
        return key[:4] + "59.999999"
    return key[:6] + ".999999"


def _range(column: Any, value: str, low: Any, high: Any) -> ColumnElement[bool]:  # PS3.4 C.2.2.2.5
    start, _, end = value.partition("-")
    conditions = []
    if start.strip():
        conditions.append(column >= low(start))
    if end.strip():
        conditions.append(column <= high(end))
    if not conditions:
        raise InvalidInput("A range key needs at least one bound.")
    return and_(*conditions)


def _one(key: Key, value: str, dialect: str) -> ColumnElement[bool]:
    """The condition of one (backslash-free) value of ``key``."""
    column = key.column
    if key.kind == "UI":
        if _has_wild(value):
            raise InvalidInput(f"{key.keyword} does not take wild cards.")
        return column == value.strip()  # type: ignore[no-any-return]
    if key.kind == "DA":
        if "-" in value:
            return _range(column, value, _date, _date)
        return column == _date(value)  # type: ignore[no-any-return]
    if key.kind == "TM":
        target = key.match_column if key.match_column is not None else column
        if "-" in value:
            return _range(target, value, _time_low, _time_high)
        return and_(target >= _time_low(value), target <= _time_high(value))
    if key.kind == "PN":
        folded = norm_pn(value) or ""
        target = key.match_column
        if _has_wild(folded):
            return _wild(target, folded, dialect)
        return target == folded  # type: ignore[no-any-return]
    if key.kind == "INT":
        try:
            return column == int(value.strip())  # type: ignore[no-any-return]
        except ValueError:
            raise InvalidInput(f"{key.keyword} is a number.") from None
    if key.kind == "MOD":
        series = dicom_series.c
        modality = (
            _wild(series.modality, value, dialect)
            if _has_wild(value)
            else series.modality == value.strip()
        )
        return exists(select(series.pk).where(series.study_pk == dicom_studies.c.pk, modality))
    if key.kind == "COUNT":
        return false() if not value.strip().isdigit() else column == int(value.strip())
    text = value.strip() if key.vr in ("CS", "SH", "LO") else value
    if _has_wild(text):
        return _wild(column, text, dialect)
    return column == text  # type: ignore[no-any-return]


def condition_for(key: Key, value: QueryValue, dialect: str) -> ColumnElement[bool] | None:
    """The SQL condition of one key, or None when it matches everything (universal)."""
    if key.kind == "SQ":
        items = value if isinstance(value, list) else []
        item_keys = SEQUENCE_ITEMS.get(key.keyword, {})
        conditions: list[ColumnElement[bool]] = []
        for item in items[:1]:
            for name, item_value in item.items():
                column = item_keys.get(name)
                if column is None or not isinstance(item_value, str) or not item_value:
                    continue
                sub = Key(name, key.level, column, "STR", "SH")
                conditions.append(_one(sub, item_value, dialect))
        if not conditions:
            return None
        if key.keyword in SEQUENCE_TABLES:  # one item matches all the item keys
            table, joined = SEQUENCE_TABLES[key.keyword]
            return exists(select(table.c.pk).where(joined, *conditions))
        return and_(*conditions)
    if value is None or not isinstance(value, str) or value == "" or value == "*":
        return None
    values = [v for v in value.split("\\")]
    parts = [_one(key, v, dialect) for v in values if v != "" or key.kind == "STR"]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else or_(*parts)


#: Date and time key pairs that combined date-time matching joins (PS3.4 C.2.2.2.5.1),
#: where the index keeps a padded time key.
COMBINED_PAIRS = (
    ("StudyDate", "StudyTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
)


def combined_condition(date_key: Key, time_key_: Key, date: str, time: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.5.1: a date range and a time range read as one date-time range,
    ``<date1><time1>`` to ``<date2><time2>`` (a missing time bound is the start or
    the end of its day)."""
    day, clock = date_key.column, time_key_.match_column
    low_date, _, high_date = date.partition("-")
    low_time, _, high_time = time.partition("-") if "-" in time else (time, "", time)
    conditions: list[ColumnElement[bool]] = []
    if low_date.strip():
        d = _date(low_date)
        t = _time_low(low_time) if low_time.strip() else "000000.000000"
        conditions.append(or_(day > d, and_(day == d, clock >= t)))
    if high_date.strip():
        d = _date(high_date)
        t = _time_high(high_time) if high_time.strip() else "235959.999999"
        conditions.append(or_(day < d, and_(day == d, clock <= t)))
    if not conditions:
        raise InvalidInput("A range key needs at least one bound.")
    return and_(*conditions)


class Matcher:
    """Builds the WHERE clause of a query at one level from an identifier.

    ``combined_datetime``: date and time keys of one pair (:data:`COMBINED_PAIRS`)
    given together, the date as a range, match as one date-time range (PS3.4
    C.2.2.2.5.1; C-FIND when the SCU asked for it by extended negotiation,
    QIDO-RS always)."""

    def __init__(self, level: Level, dialect: str, combined_datetime: bool = False) -> None:
        self.level = level
        self.dialect = dialect
        self.combined_datetime = combined_datetime

    def _combined(
        self, identifier: Mapping[str, QueryValue]
    ) -> tuple[list[tuple[Key, ColumnElement[bool]]], set[str]]:
        found: list[tuple[Key, ColumnElement[bool]]] = []
        used: set[str] = set()
        if not self.combined_datetime:
            return found, used
        for date_kw, time_kw in COMBINED_PAIRS:
            date, time = identifier.get(date_kw), identifier.get(time_kw)
            if not isinstance(date, str) or not isinstance(time, str):
                continue
            if "-" not in date or "\\" in date or "\\" in time or not time.strip("-"):
                continue
            date_key, time_key_ = KEYS[date_kw], KEYS[time_kw]
            found.append((date_key, combined_condition(date_key, time_key_, date, time)))
            used.update((date_kw, time_kw))
        return found, used

    def conditions(self, identifier: Mapping[str, QueryValue]) -> list[ColumnElement[bool]]:
        """Conditions on the level's row joined with its parents, plus EXISTS
        sub-queries for keys of lower levels (relational queries)."""
        here: list[ColumnElement[bool]] = []
        below: dict[Level, list[ColumnElement[bool]]] = {}
        combined, used = self._combined(identifier)
        for pair_key, pair_condition in combined:
            if pair_key.level.depth <= self.level.depth:
                here.append(pair_condition)
            else:
                below.setdefault(pair_key.level, []).append(pair_condition)
        for keyword, value in identifier.items():
            key = KEYS.get(keyword)
            if key is None or keyword in used:
                continue
            condition = condition_for(key, value, self.dialect)
            if condition is None:
                continue
            if key.level.depth <= self.level.depth:
                here.append(condition)
            else:
                below.setdefault(key.level, []).append(condition)
        if below:
            here.append(self._exists_below(below))
        return here

    def _exists_below(self, below: dict[Level, list[ColumnElement[bool]]]) -> ColumnElement[bool]:
        deepest = max(below, key=lambda lv: lv.depth)
        conds = [c for lv in below for c in below[lv]]
        series, inst = dicom_series.c, dicom_instances.c
        if deepest is Level.SERIES:
            query = select(series.pk).where(*conds)
        else:
            query = (
                select(inst.pk)
                .select_from(dicom_instances.join(dicom_series, series.pk == inst.series_pk))
                .where(*conds)
            )
        if self.level is Level.PATIENT:
            studies = dicom_studies.c
            query = query.join_from(
                dicom_series, dicom_studies, studies.pk == series.study_pk
            ).where(studies.patient_pk == dicom_patients.c.pk)
            if deepest is Level.IMAGE:
                query = (
                    select(inst.pk)
                    .select_from(
                        dicom_instances.join(dicom_series, series.pk == inst.series_pk).join(
                            dicom_studies, studies.pk == series.study_pk
                        )
                    )
                    .where(*conds, studies.patient_pk == dicom_patients.c.pk)
                )
        elif self.level is Level.STUDY:
            query = query.where(series.study_pk == dicom_studies.c.pk)
        elif self.level is Level.SERIES:
            query = query.where(inst.series_pk == dicom_series.c.pk)
        return exists(query)
