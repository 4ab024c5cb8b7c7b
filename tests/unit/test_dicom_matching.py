"""PS3.4 C.2.2.2 matching rules, as SQL text (no database needed)."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from salus.dicom.matching import KEYS, Level, Matcher, condition_for, like_pattern
from salus.dicom.parse import norm_pn, time_key
from salus.errors import InvalidInput


def sql(keyword: str, value: object, dialect: str = "postgresql") -> str:
    condition = condition_for(KEYS[keyword], value, dialect)  # type: ignore[arg-type]
    if condition is None:
        return "<universal>"
    compiler = postgresql.dialect() if dialect == "postgresql" else sqlite.dialect()
    return str(condition.compile(dialect=compiler, compile_kwargs={"literal_binds": True}))


def test_universal_matching() -> None:
    assert sql("PatientID", "") == "<universal>"
    assert sql("PatientID", None) == "<universal>"
    assert sql("StudyDate", "*") == "<universal>"
    assert sql("IssuerOfAccessionNumberSequence", []) == "<universal>"


def test_single_value_and_uid_list() -> None:
    assert sql("PatientID", "12") == "dicom_patients.patient_id = '12'"
    text = sql("StudyInstanceUID", "1.2\\1.3")
    assert "study_uid = '1.2'" in text and "study_uid = '1.3'" in text and " OR " in text


def test_wildcards_are_escaped() -> None:
    assert like_pattern("DO*_%?", "postgresql") == "DO%\\_\\%_"
    assert like_pattern("a[b]*", "sqlite") == "a[[]b[]]*"
    assert "LIKE 'SMITH%" in sql("StudyDescription", "SMITH*")
    assert "GLOB 'SMITH*'" in sql("StudyDescription", "SMITH*", "sqlite")


def test_person_names_match_case_insensitively() -> None:
    assert norm_pn("doe^john^^^") == "DOE^JOHN"
    assert norm_pn("^^^^") is None
    assert "patient_name_norm = 'DOE^JOHN'" in sql("PatientName", "Doe^John")
    assert "patient_name_norm LIKE 'DOE%" in sql("PatientName", "doe*")


def test_date_and_time_ranges() -> None:
    text = sql("StudyDate", "20200101-20201231")
    assert "study_date >= '20200101'" in text and "study_date <= '20201231'" in text
    assert sql("StudyDate", "-20201231") == "dicom_studies.study_date <= '20201231'"
    assert sql("StudyDate", "20201231-") == "dicom_studies.study_date >= '20201231'"
    text = sql("StudyTime", "10-1030")
    assert "study_time_key >= '100000.000000'" in text
    assert "study_time_key <= '103059.999999'" in text
    assert time_key("1030") == "103000.000000"
    assert time_key("10:30:15.5") == "103015.500000"
    with pytest.raises(InvalidInput):
        sql("StudyDate", "2020-13")
    with pytest.raises(InvalidInput):
        sql("StudyInstanceUID", "1.2.*")


def test_sequence_matching() -> None:
    text = sql("IssuerOfAccessionNumberSequence", [{"LocalNamespaceEntityID": "HOSP*"}])
    assert "accession_issuer LIKE 'HOSP%" in text


def test_relational_keys_become_exists() -> None:
    conditions = Matcher(Level.STUDY, "postgresql").conditions(
        {"PatientID": "1", "Modality": "MR", "SOPClassUID": "1.2"}
    )
    rendered = " ".join(
        str(c.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        for c in conditions
    )
    assert "patient_id = '1'" in rendered
    assert "EXISTS" in rendered and "modality = 'MR'" in rendered
    assert "sop_class_uid = '1.2'" in rendered
    # keys Salus does not index are ignored for matching (C.2.2.1.1)
    assert Matcher(Level.STUDY, "sqlite").conditions({"OperatorsName": "X"}) == []
