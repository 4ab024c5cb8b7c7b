"""The archive core on SQLite and PostgreSQL: policies, ImagingStudy link, events, deletion."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from sqlalchemy import select

from salus.db.tables import fhir_resources, jobs
from salus.dicom.archive import DuplicateInstance
from salus.dicom.index import PatientConflict
from salus.dicom.matching import Level
from salus.errors import Forbidden, InvalidInput, NotFound
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from tests.conftest import BACKENDS
from tests.integration.dicom_world import DicomWorld, dicom_world, sample

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@pytest.fixture(params=BACKENDS)
def dw(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with dicom_world(request.param, tmp_path) as world:
        yield world


def changed(name: str, **attrs: Any) -> bytes:
    ds = dcmread(BytesIO(sample(name)))
    for key, value in attrs.items():
        setattr(ds, key, value)
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def fhir(dw: DicomWorld, res_type: str) -> list[dict[str, Any]]:
    store = dw.services.fhir_store
    with dw.services.db.read() as conn:
        rows = (
            conn.execute(
                select(fhir_resources).where(
                    fhir_resources.c.res_type == res_type, fhir_resources.c.deleted.is_(False)
                )
            )
            .mappings()
            .all()
        )
    return [store.stored_from_row(row).resource or {} for row in rows]


def test_duplicate_policies(tmp_path: Path) -> None:
    for policy, outcome in (("keep", "kept"), ("replace", "replaced"), ("reject", None)):
        with dicom_world("sqlite", tmp_path / policy, dicom_duplicate_policy=policy) as dw:
            a = dw.principal()
            assert dw.archive.store(a, sample("CT_small.dcm")).outcome == "stored"
            assert dw.archive.store(a, sample("CT_small.dcm")).outcome == "duplicate"
            other = changed("CT_small.dcm", StudyDescription="other")
            if outcome is None:
                with pytest.raises(DuplicateInstance) as caught:
                    dw.archive.store(a, other)
                assert caught.value.dimse_status == 0x0111
            else:
                assert dw.archive.store(a, other).outcome == outcome
            (match,) = dw.archive.find(a, Level.STUDY, {"StudyDescription": ""})
            expected = "other" if policy == "replace" else "e+1"
            assert match.attributes["StudyDescription"] == expected
            assert match.attributes["NumberOfStudyRelatedInstances"] == 1


def test_patient_conflict_policies(tmp_path: Path) -> None:
    for policy in ("update", "keep", "reject"):
        with dicom_world("sqlite", tmp_path / policy, dicom_patient_conflict=policy) as dw:
            a = dw.principal()
            dw.archive.store(a, sample("CT_small.dcm"))
            second = changed(
                "CT_small.dcm",
                SOPInstanceUID="1.2.3.4.5.6.7",
                PatientName="Other^Name",
            )
            if policy == "reject":
                with pytest.raises(PatientConflict):
                    dw.archive.store(a, second)
                continue
            dw.archive.store(a, second)
            (match,) = dw.archive.find(a, Level.PATIENT, {"PatientID": "1CT1", "PatientName": ""})
            expected = "Other^Name" if policy == "update" else "CompressedSamples^CT1"
            assert match.attributes["PatientName"] == expected


def test_refusals_leave_nothing(dw: DicomWorld) -> None:
    a = dw.principal()
    with pytest.raises(InvalidInput):
        dw.archive.store(a, sample("MR_truncated.dcm"))
    with pytest.raises(InvalidInput):
        dw.archive.store(a, sample("HTJ2K_08_RGB.dcm"))  # no Study Instance UID
    with pytest.raises(InvalidInput):
        dw.archive.store(a, sample("no_meta.dcm"))
    with pytest.raises(InvalidInput):
        dw.archive.store(a, sample("CT_small.dcm")[:2000])  # cut short
    assert dw.archive.find(a, Level.IMAGE, {}) == []
    researcher = Principal(
        kind=PrincipalKind.USER,
        id="r",
        org_id="uni",
        roles=frozenset({"researcher"}),
        scopes=frozenset({"user/*.rs"}),
        auth_method=AuthMethod.PASSWORD,
    )
    with pytest.raises(Forbidden):
        dw.archive.find(researcher, Level.STUDY, {})


def test_imaging_study_is_created_updated_and_deleted(dw: DicomWorld) -> None:
    a = dw.principal()
    dw.archive.store(a, sample("JPEG-lossy.dcm"))
    dw.drain_jobs()
    (study,) = fhir(dw, "ImagingStudy")
    (patient,) = fhir(dw, "Patient")
    assert study["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert patient["identifier"][0]["value"] == "8NM1"
    assert study["numberOfInstances"] == 1
    assert study["modality"][0]["code"] == "NM"
    (endpoint,) = fhir(dw, "Endpoint")
    assert endpoint["address"].endswith("/dicomweb")
    # a second instance of the same study (JPEG2000.dcm) updates it
    dw.archive.store(a, sample("JPEG2000.dcm"))
    dw.drain_jobs()
    (study,) = fhir(dw, "ImagingStudy")
    assert study["numberOfInstances"] == 2
    assert study["meta"]["versionId"] == "2"
    assert len(fhir(dw, "Patient")) == 1  # linked, not created again
    # the link is in the index: the study row carries the FHIR patient
    (match,) = dw.archive.find(a, Level.STUDY, {})
    assert match.patient_key == patient["id"]
    with dw.services.db.read() as conn:
        kinds = conn.execute(select(jobs.c.kind, jobs.c.status)).all()
    assert ("dicom.instance-stored", "done") in kinds
    assert ("dicom.study-stable", "done") in kinds
    dw.archive.delete(a, match.study_uid or "")
    dw.drain_jobs()
    assert fhir(dw, "ImagingStudy") == []
    with pytest.raises(NotFound):
        dw.archive.metadata(a, match.study_uid or "")


def test_metadata_and_delete_keep_blobs_consistent(dw: DicomWorld) -> None:
    a = dw.principal()
    result = dw.archive.store(a, sample("CT_small.dcm"))
    (meta,) = dw.archive.metadata(a, CT_STUDY)
    assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert meta["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    b = dw.principal("b-feed")
    with pytest.raises(NotFound):
        dw.archive.metadata(b, CT_STUDY)
    with pytest.raises(NotFound):
        dw.archive.delete(b, CT_STUDY)
    assert dw.services.blobs.exists(result.digest)
    assert dw.archive.delete(a, CT_STUDY) == 1
    assert not dw.services.blobs.exists(result.digest)
