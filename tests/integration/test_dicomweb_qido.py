"""QIDO-RS over real HTTP on SQLite and PostgreSQL: every resource, keys by keyword
and tag, matching, includefield, fuzzymatching, limit/offset, answered from the index."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import BACKENDS
from tests.integration.dicom_world import stow_body, web_sample
from tests.integration.security_world import World, make_world

PATIENT_ID, PATIENT_NAME, STUDY_UID = "00100020", "00100010", "0020000D"
SERIES_UID, SOP_UID, MODALITIES, STUDY_DATE = "0020000E", "00080018", "00080061", "00080020"


def instance(study: str, series: str, number: int, **attrs: Any) -> bytes:
    """A small synthetic CT instance of the given study and series."""
    ds = dcmread(BytesIO(web_sample("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[study, series, str(number)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


STUDIES = [
    # study id, patient id, name, date, time, modality, accession issuer
    ("1", "QP-1", "Nguyen^Van^An", "20240105", "083000", "CT", "HOSP-A"),
    ("2", "QP-1", "Nguyen^Van^An", "20240210", "141500", "MR", "HOSP-A"),
    ("3", "QP-2", "Tran^Thi^Binh", "20240301", "230000", "CT", "OTHER"),
    ("4", "QP-3", "Smith^John", "20231231", "120000", "US", ""),
]


def study_uid(key: str) -> str:
    return generate_uid(entropy_srcs=["qido-study", key])


@pytest.fixture(scope="module", params=BACKENDS)
def web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("qido")
    with make_world(request.param, folder, dicomweb_qido_max_results=50) as world:
        files = []
        for key, pid, name, date, time, modality, issuer in STUDIES:
            study = study_uid(key)
            for series_no in (1, 2):
                series = generate_uid(entropy_srcs=[study, str(series_no)])
                for number in (1, 2):
                    attrs: dict[str, Any] = dict(
                        PatientID=pid,
                        PatientName=name,
                        StudyDate=date,
                        StudyTime=time,
                        Modality=modality,
                        SeriesNumber=series_no,
                        AccessionNumber=f"ACC{key}",
                        StudyDescription=f"Study {key}",
                    )
                    if issuer:
                        item = Dataset()
                        item.LocalNamespaceEntityID = issuer
                        attrs["IssuerOfAccessionNumberSequence"] = [item]
                    files.append(instance(study, series, number, **attrs))
        body, content_type = stow_body(files)
        headers = world.headers("a-feed", **{"Content-Type": content_type})
        response = world.client.post("/dicomweb/studies", content=body, headers=headers)
        assert response.status_code == 200, response.text
        yield world


def qido(web: World, path: str, who: str = "a-feed", **params: Any) -> Any:
    return web.client.get(f"/dicomweb{path}", params=params, headers=web.headers(who))


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r[tag] else None for r in results]


def ours(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {study_uid(s[0]) for s in STUDIES}
    return [r for r in results if r[STUDY_UID]["Value"][0] in keys]


def test_studies_default_attributes(web: World) -> None:
    response = qido(web, "/studies", PatientID="QP-1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    results = response.json()
    assert sorted(values(results, STUDY_UID)) == sorted([study_uid("1"), study_uid("2")])
    first = results[0]
    assert first[PATIENT_NAME] == {"vr": "PN", "Value": [{"Alphabetic": "Nguyen^Van^An"}]}
    assert first["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    assert first["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert first["00080056"]["Value"] == ["ONLINE"]
    assert first["00081190"]["Value"][0].startswith("http://testserver/dicomweb/studies/")
    assert list(first) == sorted(first)  # tags in order (PS3.18 F.2)


def test_matching_by_keyword_tag_wildcard_range_and_lists(web: World) -> None:
    by_tag = ours(qido(web, "/studies", **{PATIENT_ID: "QP-2"}).json())
    assert values(by_tag, STUDY_UID) == [study_uid("3")]
    wild = ours(qido(web, "/studies", PatientName="nguyen*").json())  # PN: case-insensitive
    assert len(wild) == 2
    dates = ours(qido(web, "/studies", StudyDate="20240101-20240229").json())
    assert sorted(values(dates, STUDY_DATE)) == ["20240105", "20240210"]
    open_end = ours(qido(web, "/studies", StudyDate="20240201-").json())
    assert len(open_end) == 2
    times = ours(qido(web, "/studies", StudyTime="1200-1500").json())
    assert sorted(values(times, "00080030")) == ["120000", "141500"]
    uid_list = qido(web, "/studies", StudyInstanceUID=f"{study_uid('1')},{study_uid('4')}").json()
    assert sorted(values(uid_list, STUDY_UID)) == sorted([study_uid("1"), study_uid("4")])
    modality = ours(qido(web, "/studies", ModalitiesInStudy="MR").json())
    assert values(modality, STUDY_UID) == [study_uid("2")]
    seq = ours(
        qido(
            web, "/studies", **{"IssuerOfAccessionNumberSequence.LocalNamespaceEntityID": "HOSP-A"}
        ).json()
    )
    assert len(seq) == 2
    repeated = web.client.get(
        "/dicomweb/studies?AccessionNumber=ACC1&AccessionNumber=ACC3",
        headers=web.headers("a-feed"),
    ).json()
    assert sorted(values(repeated, "00080050")) == ["ACC1", "ACC3"]


def test_fuzzymatching(web: World) -> None:
    assert ours(qido(web, "/studies", PatientName="binh").json()) == []
    fuzzy = ours(qido(web, "/studies", PatientName="binh", fuzzymatching="true").json())
    assert values(fuzzy, STUDY_UID) == [study_uid("3")]


def test_includefield_limit_offset(web: World) -> None:
    base = qido(web, "/studies", PatientID="QP-*", includefield="StudyDescription")
    results = base.json()
    assert len(results) == 4 and all("00081030" in r for r in results)
    every = qido(web, "/studies/{}/series".format(study_uid("1")), includefield="all").json()
    assert all(PATIENT_ID in r and STUDY_DATE in r for r in every)
    plain = qido(web, "/studies/{}/series".format(study_uid("1"))).json()
    assert all(PATIENT_ID not in r for r in plain) and len(plain) == 2
    by_tag = qido(web, "/studies", PatientID="QP-3", includefield="00081030").json()
    assert by_tag[0]["00081030"]["Value"] == ["Study 4"]
    page1 = qido(web, "/studies", PatientID="QP-*", limit="3")
    assert len(page1.json()) == 3 and page1.headers["warning"].startswith("299")
    page2 = qido(web, "/studies", PatientID="QP-*", limit="3", offset="3")
    assert len(page2.json()) == 1 and "warning" not in page2.headers
    got = values(page1.json(), STUDY_UID) + values(page2.json(), STUDY_UID)
    assert sorted(got) == sorted(study_uid(s[0]) for s in STUDIES)


def test_series_and_instance_resources(web: World) -> None:
    study = study_uid("3")
    series = qido(web, f"/studies/{study}/series").json()
    assert len(series) == 2 and values(series, "00080060") == ["CT", "CT"]
    all_series = ours(qido(web, "/series", Modality="US", includefield="all").json())
    assert len(all_series) == 2 and STUDY_UID in all_series[0]
    series_uid = series[0][SERIES_UID]["Value"][0]
    inst = qido(web, f"/studies/{study}/series/{series_uid}/instances").json()
    assert sorted(values(inst, "00200013")) == [1, 2]
    assert inst[0]["00081190"]["Value"][0].endswith(f"/instances/{inst[0][SOP_UID]['Value'][0]}")
    assert len(qido(web, f"/studies/{study}/instances").json()) == 4
    one = qido(web, "/instances", SOPInstanceUID=inst[0][SOP_UID]["Value"][0]).json()
    assert len(one) == 1 and one[0][STUDY_UID]["Value"] == [study]
    relational = ours(qido(web, "/studies", Modality="US").json())  # a series key at study level
    assert values(relational, STUDY_UID) == [study_uid("4")]


def test_from_the_index_only_and_errors(web: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_blobs(*_args: Any, **_kwargs: Any) -> bytes:
        raise AssertionError("QIDO must not read a blob")

    monkeypatch.setattr(web.services.blobs, "get", no_blobs)
    assert len(ours(qido(web, "/instances", PatientID="QP-1").json())) == 8
    assert qido(web, "/studies", NoSuchKeyword="x").status_code == 400
    assert qido(web, "/studies", StudyDate="2024").status_code == 400
    assert qido(web, "/studies", limit="-1").status_code == 400
    assert qido(web, "/studies/not-a-uid/series").status_code == 400
    response = web.client.get(
        "/dicomweb/studies", headers=web.headers("a-feed", Accept="application/dicom+xml")
    )
    assert response.status_code == 406
    assert qido(web, "/studies", PatientID="NOBODY").json() == []
