"""Who may use DICOMweb, on SQLite and PostgreSQL: hospital B cannot query, retrieve
or add to hospital A's studies; researchers and analysts get nothing; a treatment
relationship or the patient's consent opens A's images to B's clinician; refusals
and accesses are audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import audit_events
from salus.db.tables_dicom import dicom_studies
from salus.jobs import Worker
from tests.conftest import BACKENDS
from tests.integration.dicom_world import stow_body, uids, web_sample
from tests.integration.security_world import SYSTEM, World, make_world

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(params=BACKENDS)
def web(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[World]:
    with make_world(request.param, tmp_path) as world:
        body, content_type = stow_body([web_sample("CT_small.dcm")])
        headers = world.headers("a-feed", **{"Content-Type": content_type})
        assert world.client.post("/dicomweb/studies", content=body, headers=headers).is_success
        Worker(world.services.jobs, world.services.job_handlers).drain()  # ImagingStudy, Patient
        yield world


def paths() -> dict[str, str]:
    study, series, instance = uids(web_sample("CT_small.dcm"))
    base = f"/dicomweb/studies/{study}"
    inst = f"{base}/series/{series}/instances/{instance}"
    return {
        "qido": f"/dicomweb/studies?StudyInstanceUID={study}",
        "study": base,
        "metadata": f"{base}/metadata",
        "frames": f"{inst}/frames/1",
        "rendered": f"{inst}/rendered",
        "wado-uri": (
            f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
            f"&objectUID={instance}&contentType=application/dicom&transferSyntax=*"
        ),
    }


def can_read(web: World, who: str) -> dict[str, int]:
    out = {}
    for name, path in paths().items():
        response = web.client.get(path, headers=web.headers(who, Accept="*/*"))
        if name == "qido" and response.status_code == 200:
            out[name] = 200 if response.json() else 404
        else:
            out[name] = response.status_code
    return out


def test_own_hospital_reads_other_hospital_does_not(web: World) -> None:
    for who in ("a-feed", "a-doc"):
        assert set(can_read(web, who).values()) == {200}, who
    for who in ("b-feed", "b-doc"):
        assert set(can_read(web, who).values()) == {404}, who  # invisible, not forbidden
    for who in ("uni-res", "moh-analyst"):
        assert set(can_read(web, who).values()) == {403}, who
    assert set(can_read(web, "a-admin").values()) <= {403}
    response = web.client.get(paths()["study"])
    assert response.status_code == 401


def test_hospital_b_cannot_store_into_hospital_a_study(web: World) -> None:
    from io import BytesIO

    from pydicom import dcmread

    study, _, _ = uids(web_sample("CT_small.dcm"))
    ds = dcmread(BytesIO(web_sample("MR_small_implicit.dcm")))
    ds.StudyInstanceUID = study
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    body, content_type = stow_body([out.getvalue(), web_sample("CT_small.dcm")])
    headers = web.headers("b-feed", **{"Content-Type": content_type})
    response = web.client.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 409
    reasons = [i["00081197"]["Value"][0] for i in response.json()["00081198"]["Value"]]
    assert reasons == [0xA900, 0x0111]  # A's study; A's SOP Instance UID
    headers = web.headers("b-feed", **{"Content-Type": content_type})
    response = web.client.post(f"/dicomweb/studies/{study}", content=body, headers=headers)
    assert response.status_code == 409


def _patient_key(web: World) -> str:
    study, _, _ = uids(web_sample("CT_small.dcm"))
    with web.services.db.read() as conn:
        key = conn.execute(
            select(dicom_studies.c.patient_key).where(dicom_studies.c.study_uid == study)
        ).scalar_one()
    assert key, "the ImagingStudy sync links the study to its FHIR Patient"
    return str(key)


def test_treatment_relationship_shares_images_with_b_clinician(web: World) -> None:
    web.services.care.record_treatment(
        SYSTEM, patient_key=_patient_key(web), org_id="hosp-b", source="referral"
    )
    assert set(can_read(web, "b-doc").values()) == {200}
    # An integration client reads its own hospital's data only; no sharing for it.
    assert set(can_read(web, "b-feed").values()) == {404}
    # The FHIR ImagingStudy points at DICOMweb.
    study, _, _ = uids(web_sample("CT_small.dcm"))
    imaging = web.client.get(f"/fhir/ImagingStudy/{study}", headers=web.headers("b-doc")).json()
    endpoint = imaging["endpoint"][0]["reference"]
    address = web.client.get(f"/fhir/{endpoint}", headers=web.headers("a-doc")).json()
    assert address["address"].endswith("/dicomweb")
    assert address["connectionType"]["code"] == "dicom-wado-rs"


def test_consent_shares_images_with_b_clinician(web: World) -> None:
    web.services.care.record_consent(
        SYSTEM,
        patient_key=_patient_key(web),
        decision="permit",
        grantee_org_id="hosp-b",
        source="test",
    )
    assert can_read(web, "b-doc")["study"] == 200


def test_accesses_and_refusals_are_audited(web: World) -> None:
    can_read(web, "a-doc")
    can_read(web, "uni-res")
    with web.services.db.read() as conn:
        rows = conn.execute(
            select(audit_events.c.entity, audit_events.c.action, audit_events.c.outcome)
        ).all()
    study, _, _ = uids(web_sample("CT_small.dcm"))
    granted = {(r[0], r[1]) for r in rows if r[2] == 0}
    assert (f"dicom:studies/{study}", "R") in granted
    assert ("dicom query STUDY", "E") in granted
    refused = {r[0] for r in rows if r[2] == 4}
    assert "GET /dicomweb/studies/{study}" in refused
    assert "GET /dicomweb/studies" in refused
