"""Combined date-time range matching (PS3.4 C.2.2.2.5.1) on both backends: C-FIND when
the SCU asks for it by SOP Class Extended Negotiation (otherwise date and time match
independently), QIDO-RS always."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from salus.dicom.dimse import QR_FIND, DimseListener
from tests.conftest import BACKENDS
from tests.integration.dicom_world import web_sample
from tests.integration.security_world import SYSTEM, World, make_world

#: (StudyDate, StudyTime) of the studies stored.
WHEN = [("20240101", "090000"), ("20240102", "080000"), ("20240102", "200000"), ("20240103", "07")]


def study(date: str, time: str) -> bytes:
    ds = dcmread(BytesIO(web_sample("CT_small.dcm")))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.PatientID = date, time, "DT-1"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(params=BACKENDS)
def web(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[World, int]]:
    with make_world(request.param, tmp_path, dicom_port=0) as world:
        world.services.directory.add_edge_identity(
            SYSTEM, kind="dicom", client_id="a-feed", ae_title="MOD_A"
        )
        principal = world.services.directory.client_principal("a-feed")
        assert world.services.dicom is not None
        for date, time in WHEN:
            world.services.dicom.store(principal, study(date, time))
        listener = DimseListener(world.services)
        listener.start_sync()
        try:
            yield world, listener.port
        finally:
            listener.stop_sync()


def c_find_times(port: int, identifier: Dataset, combined: bool) -> list[str]:
    ae = AE(ae_title="MOD_A")
    ae.add_requested_context(QR_FIND[1])
    negotiation: list[Any] = []
    if combined:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = QR_FIND[1]
        item.service_class_application_information = b"\x01\x01"  # relational, date-time
        negotiation.append(item)
    assoc = ae.associate("127.0.0.1", port, ae_title="SALUS", ext_neg=negotiation)
    assert assoc.is_established
    found = []
    try:
        for status, ds in assoc.send_c_find(identifier, QR_FIND[1]):
            if status.Status == 0xFF00 and ds is not None:
                found.append(f"{ds.StudyDate} {ds.StudyTime}")
    finally:
        assoc.release()
    return sorted(found)


def query(date: str, time: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate, ds.StudyTime = date, time
    return ds


def test_c_find_combines_date_and_time_only_when_negotiated(web: tuple[World, int]) -> None:
    _world, port = web
    identifier = query("20240101-20240102", "1000-1900")
    # independently: a date in the range and a time between 10:00 and 19:00 — none
    assert c_find_times(port, identifier, combined=False) == []
    # combined: from 2024-01-01 10:00 to 2024-01-02 19:00
    assert c_find_times(port, identifier, combined=True) == ["20240102 080000"]
    # open-ended ranges: from 2024-01-02 12:00 on
    assert c_find_times(port, query("20240102-", "12-"), combined=True) == [
        "20240102 200000",
        "20240103 07",
    ]


def test_qido_combines_date_and_time(web: tuple[World, int]) -> None:
    world, _port = web
    response = world.client.get(
        "/dicomweb/studies",
        params={"StudyDate": "20240101-20240102", "StudyTime": "1000-1900", "PatientID": "DT-1"},
        headers=world.headers("a-feed", Accept="application/dicom+json"),
    )
    assert response.status_code == 200, response.text
    assert [s["00080030"]["Value"][0] for s in response.json()] == ["080000"]
    # a single date stays a date: same-day time range
    response = world.client.get(
        "/dicomweb/studies",
        params={"StudyDate": "20240102", "StudyTime": "0700-0900"},
        headers=world.headers("a-feed", Accept="application/dicom+json"),
    )
    assert [s["00080030"]["Value"][0] for s in response.json()] == ["080000"]
