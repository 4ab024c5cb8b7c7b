"""STOW-RS over real HTTP on SQLite and PostgreSQL: the Store Instances Response
(ReferencedSOPSequence, FailedSOPSequence, failure and warning reasons), HTTP
200/202/409/4xx, the body limit, XML responses, and refused stores leave no blob."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from salus.db.tables import audit_events
from salus.db.tables_dicom import dicom_instances
from tests.conftest import BACKENDS
from tests.integration.dicom_world import sample, stow_body, uids, web_sample
from tests.integration.security_world import World, make_world

REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
FAILURE_REASON, WARNING_REASON, SOP_INSTANCE = "00081197", "00081196", "00081155"


@pytest.fixture(scope="module", params=BACKENDS)
def web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("stow")
    with make_world(
        request.param,
        folder,
        dicom_patient_conflict="keep",
        dicom_duplicate_policy="keep",
        http_max_body_bytes=400_000,
    ) as world:
        yield world


def stow(
    web: World, files: list[bytes], who: str = "a-feed", path: str = "/dicomweb/studies", **h: str
) -> Any:
    body, content_type = stow_body(files)
    return web.client.post(
        path, content=body, headers=web.headers(who, **{"Content-Type": content_type, **h})
    )


def reasons(answer: dict[str, Any], key: str = FAILED, field: str = FAILURE_REASON) -> list[int]:
    return [
        item[field]["Value"][0] for item in answer.get(key, {}).get("Value", []) if field in item
    ]


def variant(name: str, **changes: str) -> bytes:
    ds = dcmread(BytesIO(web_sample(name)))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def blob_count(web: World) -> int:
    folder = Path(web.services.settings.blob_path())
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_all_stored_is_200_with_references(web: World) -> None:
    files = [web_sample("CT_small.dcm"), web_sample("MR_small_RLE.dcm")]
    response = stow(web, files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    items = answer[REFERENCED]["Value"]
    assert [i[SOP_INSTANCE]["Value"][0] for i in items] == [uids(f)[2] for f in files]
    study, series, instance = uids(files[0])
    assert items[0][RETRIEVE_URL]["Value"] == [
        f"http://testserver/dicomweb/studies/{study}/series/{series}/instances/{instance}"
    ]
    assert FAILED not in answer and RETRIEVE_URL not in answer  # two studies: no study URL
    # Storing the same bytes again is a success that changes nothing.
    again = stow(web, files[:1])
    assert again.status_code == 200
    assert again.json()[RETRIEVE_URL]["Value"] == [f"http://testserver/dicomweb/studies/{study}"]


def test_failure_reasons_and_202(web: World) -> None:
    good = variant("CT_small.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.1001")
    files = [good, sample("MR_truncated.dcm"), sample("no_meta.dcm"), sample("HTJ2K_08_RGB.dcm")]
    response = stow(web, files)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert reasons(answer) == [0xC000, 0xC000, 0xA900]  # truncated, no File Meta, no study UID
    failed = answer[FAILED]["Value"]
    htj2k = dcmread(BytesIO(sample("HTJ2K_08_RGB.dcm")), stop_before_pixels=True)
    assert failed[2][SOP_INSTANCE]["Value"] == [htj2k.SOPInstanceUID]  # UIDs when readable
    assert len(answer[REFERENCED]["Value"]) == 1


def test_nothing_stored_is_409_and_refused_stores_leave_no_blob(web: World) -> None:
    assert stow(web, [sample("MR_truncated.dcm")]).status_code == 409
    before = blob_count(web)
    # Hospital B adds an instance to hospital A's study: refused inside the
    # transaction, after the blob was written; the blob goes again.
    study, _, _ = uids(web_sample("CT_small.dcm"))
    intruder = variant(
        "MR_small_implicit.dcm",
        StudyInstanceUID=study,
        SOPInstanceUID="1.2.826.0.1.3680043.8.498.1002",
    )
    response = stow(web, [intruder], who="b-feed")
    assert response.status_code == 409
    assert reasons(response.json()) == [0xA900]
    assert blob_count(web) == before
    with web.services.db.read() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(dicom_instances)
            .where(dicom_instances.c.sop_instance_uid == "1.2.826.0.1.3680043.8.498.1002")
        ).scalar_one()
    assert count == 0


def test_study_in_the_url_must_match(web: World) -> None:
    study, _, _ = uids(web_sample("MR_small_jp2klossless.dcm"))
    other = web_sample("MR_small_implicit.dcm")
    response = stow(
        web, [web_sample("MR_small_jp2klossless.dcm"), other], path=f"/dicomweb/studies/{study}"
    )
    assert response.status_code == 202
    assert reasons(response.json()) == [0xA900]
    assert stow(web, [other], path="/dicomweb/studies/not.a.uid").status_code == 400


def test_warnings_coercion_and_kept_duplicate(web: World) -> None:
    base = web_sample("MR_small_jpeg_ls_lossless.dcm")
    assert stow(web, [base]).status_code == 200
    # Same UID, other bytes, duplicate policy keep: the first stays (0xB006).
    changed = variant("MR_small_jpeg_ls_lossless.dcm", StudyDescription="other")
    response = stow(web, [changed])
    assert response.status_code == 202
    assert reasons(response.json(), REFERENCED, WARNING_REASON) == [0xB006]
    # Known patient, another name, patient policy keep: the index keeps its name (0xB000).
    renamed = variant(
        "MR_small_jpeg_ls_lossless.dcm",
        SOPInstanceUID="1.2.826.0.1.3680043.8.498.1003",
        PatientName="Other^Name",
    )
    response = stow(web, [renamed])
    assert response.status_code == 202
    assert reasons(response.json(), REFERENCED, WARNING_REASON) == [0xB000]


def test_duplicate_policy_reject_is_0x0111(web: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert web.services.dicom is not None
    monkeypatch.setattr(web.services.dicom, "duplicate_policy", "reject")
    changed = variant("CT_small.dcm", StudyDescription="changed again")
    response = stow(web, [web_sample("CT_small.dcm"), changed])
    assert response.status_code == 202
    assert reasons(response.json()) == [0x0111]


def test_xml_response(web: World) -> None:
    response = stow(web, [sample("MR_truncated.dcm")], Accept="application/dicom+xml")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)  # noqa: S314 - our own response
    ns = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
    reason = root.find(f".//{ns}DicomAttribute[@keyword='FailureReason']/{ns}Value")
    assert reason is not None and reason.text == str(0xC000)


def test_bad_requests(web: World) -> None:
    headers = web.headers("a-feed", **{"Content-Type": "application/dicom"})
    assert web.client.post("/dicomweb/studies", content=b"x", headers=headers).status_code == 415
    json_type = 'multipart/related; type="application/dicom+json"; boundary=b'
    headers = web.headers("a-feed", **{"Content-Type": json_type})
    assert web.client.post("/dicomweb/studies", content=b"x", headers=headers).status_code == 415
    empty, content_type = stow_body([])
    headers = web.headers("a-feed", **{"Content-Type": content_type})
    response = web.client.post("/dicomweb/studies", content=empty, headers=headers)
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    body, content_type = stow_body([web_sample("CT_small.dcm")])
    truncated = body[: len(body) // 2]
    headers = web.headers("a-feed", **{"Content-Type": content_type})
    assert (
        web.client.post("/dicomweb/studies", content=truncated, headers=headers).status_code == 400
    )
    assert stow(web, [web_sample("CT_small.dcm")], Accept="text/html").status_code == 406
    other = body.replace(b"Content-Type: application/dicom", b"Content-Type: text/plain")
    response = web.client.post("/dicomweb/studies", content=other, headers=headers)
    assert response.status_code == 409 and reasons(response.json()) == [0xC122]


def test_body_limit_is_413(web: World) -> None:
    files = [web_sample("CT_small.dcm")] * 12  # ~480 kB > 400 kB
    response = stow(web, files)
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


def test_refusals_and_audit(web: World) -> None:
    assert stow(web, [web_sample("CT_small.dcm")]).status_code == 200
    assert stow(web, [web_sample("CT_small.dcm")], who="uni-res").status_code == 403
    body, content_type = stow_body([web_sample("CT_small.dcm")])
    response = web.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 401
    with web.services.db.read() as conn:
        rows = conn.execute(
            select(audit_events.c.category, audit_events.c.entity, audit_events.c.outcome)
        ).all()
    assert any(r[0] == "dicom" and r[1] == "dicom:studies" for r in rows)
    refused = {r[1] for r in rows if r[2] == 4}
    assert "POST /dicomweb/studies" in refused  # the researcher's and the anonymous STOW
