"""The DIMSE SCP on a loopback port, driven by pynetdicom SCUs, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import select

from salus.db.tables import audit_events
from salus.dicom.dimse import QR_FIND, QR_GET, QR_MOVE, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from tests.conftest import BACKENDS
from tests.integration.dicom_world import (
    STORE_AE,
    DicomWorld,
    StoreSCP,
    dataset_bytes,
    dicom_world,
    sample,
)

#: One file per transfer syntax (explicit/implicit LE, big endian, deflated,
#: RLE, JPEG baseline and extended, JPEG-LS, JPEG 2000 lossless and lossy).
SAMPLES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-lossy.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
]
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


@pytest.fixture(params=BACKENDS)
def dw(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with dicom_world(request.param, tmp_path, dicom_duplicate_policy="replace") as world:
        yield world


@pytest.fixture(autouse=True)
def send_files_as_they_are() -> Any:
    """pynetdicom SCUs send a file's data set bytes unchanged (not re-encoded)."""
    saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    yield
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved


def c_store(dw: DicomWorld, name: str, calling: str = "MOD_A") -> int:
    path = DATA_PATH / name
    ds = dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def c_find(
    dw: DicomWorld, identifier: Dataset, calling: str = "MOD_A", model: str = QR_FIND[1]
) -> tuple[list[Dataset], int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert assoc.is_established
    found: list[Dataset] = []
    last = -1
    try:
        for status, ds in assoc.send_c_find(identifier, model):
            last = int(status.Status)
            if last == 0xFF00 and ds is not None:
                found.append(ds)
    finally:
        assoc.release()
    return found, last


def c_get(
    dw: DicomWorld,
    identifier: Dataset,
    classes: list[str],
    syntaxes: list[str],
    calling: str = "MOD_A",
) -> tuple[dict[str, bytes], int]:
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title=calling)
    ae.add_requested_context(QR_GET[1])
    roles = []
    for sop_class in classes:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1",
        dw.port,
        ae_title="SALUS",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    last = -1
    try:
        for status, _ds in assoc.send_c_get(identifier, QR_GET[1]):
            last = int(status.Status)
    finally:
        assoc.release()
    return received, last


def study_query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def test_echo_and_unknown_ae_is_rejected(dw: DicomWorld) -> None:
    ae = AE(ae_title="MOD_A")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context("1.2.840.10008.1.1")
    refused = stranger.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert refused.is_rejected
    for _ in range(50):  # the SCP records the refusal just after sending A-ASSOCIATE-RJ
        with dw.services.db.read() as conn:
            flags = (
                conn.execute(
                    select(audit_events.c.flags).where(audit_events.c.category == "security")
                )
                .scalars()
                .all()
            )
        if any(f and "refused" in f for f in flags):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the refused association was not audited")


def test_every_transfer_syntax_is_stored_and_retrieved_byte_exact(dw: DicomWorld) -> None:
    for name in SAMPLES:
        part10 = sample(name)
        assert c_store(dw, name) == 0x0000, name
        ds = dcmread(DATA_PATH / name)
        stored = dw.archive.instances(
            dw.services.directory.client_principal("a-feed"),
            "IMAGE",
            {"SOPInstanceUID": str(ds.SOPInstanceUID)},
        )
        assert len(stored) == 1
        assert stored[0].transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        # the data set as received, byte for byte, inside the stored file
        assert dataset_bytes(bytes(dw.archive.read(stored[0]))) == dataset_bytes(part10), name
        received, status = c_get(
            dw,
            _image_query(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)),
            [str(ds.SOPClassUID)],
            [str(ds.file_meta.TransferSyntaxUID)],
        )
        assert status == 0x0000, name
        assert received[str(ds.SOPInstanceUID)] == dataset_bytes(part10), name


def _image_query(study: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = dcm_series(study)
    return ds


def dcm_series(study: str) -> str:
    for name in SAMPLES:
        ds = dcmread(DATA_PATH / name, stop_before_pixels=True)
        if ds.StudyInstanceUID == study:
            return str(ds.SeriesInstanceUID)
    raise AssertionError(study)


DATA_PATH = Path(__file__).resolve().parents[1] / "data" / "dicom"


def test_malformed_instances_are_refused_and_the_association_survives(dw: DicomWorld) -> None:
    ae = AE(ae_title="MOD_A")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert assoc.is_established
    truncated = dcmread(DATA_PATH / "MR_truncated.dcm")
    assert assoc.send_c_store(truncated).Status == 0xA900
    no_uid = dcmread(DATA_PATH / "CT_small.dcm")
    no_uid.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    del no_uid.StudyInstanceUID
    assert assoc.send_c_store(no_uid).Status == 0xA900
    good = dcmread(DATA_PATH / "MR_small_implicit.dcm")
    good.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    assert assoc.send_c_store(good).Status == 0x0000  # the association carries on
    assoc.release()
    principal = dw.services.directory.client_principal("a-feed")
    assert len(dw.archive.find(principal, "IMAGE", {})) == 1


def test_find_at_each_level_and_matching(dw: DicomWorld) -> None:
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"):
        assert c_store(dw, name) == 0x0000
    found, status = c_find(
        dw, study_query(PatientName="compressedsamples^*", StudyDate="", ModalitiesInStudy="")
    )
    assert status == 0x0000
    assert len(found) == 3
    assert {str(ds.ModalitiesInStudy) for ds in found} == {"CT", "MR", "NM"}
    found, _ = c_find(dw, study_query(StudyDate="20040801-", StudyInstanceUID=""))
    assert len(found) == 2
    found, _ = c_find(dw, study_query(ModalitiesInStudy="CT", NumberOfStudyRelatedInstances=""))
    assert [int(ds.NumberOfStudyRelatedInstances) for ds in found] == [1]
    patient = Dataset()
    patient.QueryRetrieveLevel = "PATIENT"
    patient.PatientID = "4MR1"
    patient.PatientName = ""
    found, _ = c_find(dw, patient, model=QR_FIND[0])
    assert [str(ds.PatientName) for ds in found] == ["CompressedSamples^MR1"]
    series = Dataset()
    series.QueryRetrieveLevel = "SERIES"
    series.StudyInstanceUID = CT_STUDY
    series.Modality = ""
    series.SeriesInstanceUID = ""
    found, _ = c_find(dw, series)
    assert [ds.Modality for ds in found] == ["CT"]
    with warnings.catch_warnings():  # pydicom warns about the bad DA value; that is the test
        warnings.simplefilter("ignore")
        found, status = c_find(dw, study_query(StudyDate="last week"))
    assert found == [] and status == 0xA900


def test_hospital_b_cannot_find_or_retrieve_hospital_a_studies(dw: DicomWorld) -> None:
    assert c_store(dw, "CT_small.dcm") == 0x0000
    found, _ = c_find(dw, study_query(StudyInstanceUID=""), calling="MOD_B")
    assert found == []
    received, status = c_get(
        dw,
        study_query(StudyInstanceUID=CT_STUDY),
        ["1.2.840.10008.5.1.4.1.1.2"],
        ["1.2.840.10008.1.2.1"],
        calling="MOD_B",
    )
    assert received == {} and status == 0x0000  # nothing matches for B
    # B cannot overwrite A's instance either
    assert c_store(dw, "CT_small.dcm", calling="MOD_B") == 0x0111
    found, _ = c_find(dw, study_query(StudyInstanceUID=""), calling="MOD_A")
    assert len(found) == 1
    with dw.services.db.read() as conn:
        events = conn.execute(
            select(audit_events.c.org_id, audit_events.c.action, audit_events.c.description)
            .where(audit_events.c.category == "dicom")
            .order_by(audit_events.c.seq)
        ).all()
    assert ("hosp-a", "C", "store instance") in events
    assert any(org == "hosp-b" and desc == "query" for org, _a, desc in events)


def test_move_to_a_configured_destination(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scp = StoreSCP()
    try:
        with dicom_world(
            "sqlite",
            tmp_path,
            dicom_move_destinations={STORE_AE: f"127.0.0.1:{scp.port}"},
        ) as dw:
            for name in ("CT_small.dcm", "JPEG2000.dcm"):
                assert c_store(dw, name) == 0x0000
            ae = AE(ae_title="MOD_A")
            ae.add_requested_context(QR_MOVE[1])
            assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
            statuses = [
                int(status.Status)
                for status, _ in assoc.send_c_move(
                    study_query(StudyInstanceUID=CT_STUDY), STORE_AE, QR_MOVE[1]
                )
            ]
            unknown = [
                int(status.Status)
                for status, _ in assoc.send_c_move(
                    study_query(StudyInstanceUID=CT_STUDY), "NOWHERE", QR_MOVE[1]
                )
            ]
            assoc.release()
            assert statuses[-1] == 0x0000
            assert unknown[-1] == 0xA801
            assert scp.received[CT_SOP] == dataset_bytes(sample("CT_small.dcm"))
            assert len(scp.received) == 1  # only the study asked for
    finally:
        scp.stop()


def test_find_stops_at_cancel(dw: DicomWorld) -> None:
    """PS3.4 C.4.1.3.1: after a C-CANCEL, no more Pending responses; status Cancel.
    (Over the wire the SCP often answers before the C-CANCEL arrives, so the
    handler is driven directly with an event that says it was cancelled.)"""
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"):
        assert c_store(dw, name) == 0x0000
    from types import SimpleNamespace

    principal = dw.principal()
    cancelled = {"now": False}

    class Event(SimpleNamespace):
        @property
        def is_cancelled(self) -> bool:
            return cancelled["now"]

    event = Event(
        identifier=study_query(StudyInstanceUID=""),
        assoc=SimpleNamespace(_salus_principal=principal),
    )
    responses = dw.listener._on_find(event)  # type: ignore[arg-type]
    first = next(responses)
    assert first[0] == 0xFF00
    cancelled["now"] = True
    assert [status for status, _ in responses] == [0xFE00]


def test_constants_cover_storage() -> None:
    assert len(STORAGE_SOP_CLASSES) > 100
    assert "1.2.840.10008.1.2.4.201" in TRANSFER_SYNTAXES  # HTJ2K
