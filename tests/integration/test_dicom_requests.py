"""Sequence matching on the Request Attributes Sequence (PS3.4 C.2.2.2.6; PS3.18 10.6.1.2
series keys) on both backends: C-FIND at series level, QIDO-RS ``Sequence.Key`` at
series level and relationally at study level; items returned with the series."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE

from salus.dicom.dimse import QR_FIND, DimseListener
from tests.conftest import BACKENDS
from tests.integration.dicom_world import web_sample
from tests.integration.security_world import SYSTEM, World, make_world

STUDY = generate_uid()
SERIES = {"A": generate_uid(), "B": generate_uid()}
REQUESTS = {"A": [[("RP1", "SPS1")]], "B": [[("RP2", "SPS2")], [("RP3", "")]]}
JSON = "application/dicom+json"


def instance(series: str, items: list[tuple[str, str]]) -> bytes:
    ds = dcmread(BytesIO(web_sample("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES[series]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seq = []
    for procedure, step in items:
        item = Dataset()
        item.RequestedProcedureID = procedure
        if step:
            item.ScheduledProcedureStepID = step
        seq.append(item)
    ds.RequestAttributesSequence = Sequence(seq)
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
        for series, instances in REQUESTS.items():
            for items in instances:
                world.services.dicom.store(principal, instance(series, items))
        listener = DimseListener(world.services)
        listener.start_sync()
        try:
            yield world, listener.port
        finally:
            listener.stop_sync()


def test_c_find_series_by_request_attributes(web: tuple[World, int]) -> None:
    _world, port = web
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = STUDY
    query.SeriesInstanceUID = ""
    item = Dataset()
    item.RequestedProcedureID = "RP2"
    item.ScheduledProcedureStepID = ""
    query.RequestAttributesSequence = Sequence([item])
    ae = AE(ae_title="MOD_A")
    ae.add_requested_context(QR_FIND[1])
    assoc = ae.associate("127.0.0.1", port, ae_title="SALUS")
    assert assoc.is_established
    try:
        found = [
            ds
            for status, ds in assoc.send_c_find(query, QR_FIND[1])
            if status.Status == 0xFF00 and ds is not None
        ]
    finally:
        assoc.release()
    assert [str(ds.SeriesInstanceUID) for ds in found] == [SERIES["B"]]
    items = {(str(i.RequestedProcedureID), str(i.get("ScheduledProcedureStepID", ""))) for i in
             found[0].RequestAttributesSequence}  # fmt: skip
    assert items == {("RP2", "SPS2"), ("RP3", "")}


def test_qido_sequence_keys(web: tuple[World, int]) -> None:
    world, _port = web
    headers = world.headers("a-feed", Accept=JSON)

    def series(**params: str) -> list[str]:
        response = world.client.get(f"/dicomweb/studies/{STUDY}/series", params=params,
                                    headers=headers)  # fmt: skip
        assert response.status_code in (200, 204), response.text
        return (
            sorted(s["0020000E"]["Value"][0] for s in response.json()) if response.content else []
        )

    assert series(**{"RequestAttributesSequence.RequestedProcedureID": "RP1"}) == [SERIES["A"]]
    assert series(**{"RequestAttributesSequence.ScheduledProcedureStepID": "SPS2"}) == [SERIES["B"]]
    assert series(**{"RequestAttributesSequence.RequestedProcedureID": "RP*"}) == sorted(
        SERIES.values()
    )
    # one item must match every item key: RP3 has no SPS2
    assert (
        series(
            **{
                "RequestAttributesSequence.RequestedProcedureID": "RP3",
                "RequestAttributesSequence.ScheduledProcedureStepID": "SPS2",
            }
        )
        == []
    )
    # returned with the series
    response = world.client.get(
        f"/dicomweb/studies/{STUDY}/series",
        params={"SeriesInstanceUID": SERIES["A"]},
        headers=headers,
    )
    [answer] = response.json()
    [item] = answer["00400275"]["Value"]
    assert item["00401001"]["Value"] == ["RP1"] and item["00400009"]["Value"] == ["SPS1"]
    # relational: studies with such a series
    response = world.client.get(
        "/dicomweb/studies",
        params={"RequestAttributesSequence.RequestedProcedureID": "RP2"},
        headers=headers,
    )
    assert [s["0020000D"]["Value"][0] for s in response.json()] == [STUDY]
    response = world.client.get(
        "/dicomweb/studies",
        params={"RequestAttributesSequence.RequestedProcedureID": "NONE"},
        headers=headers,
    )
    assert response.status_code == 204 or response.json() == []
