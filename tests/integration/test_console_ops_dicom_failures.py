"""The record of refused DICOM stores that the integration inbox shows
(``salus.dicom.failures``): a C-STORE refused over a real association is
recorded with its status, channel, sender and SOP Instance UID; access
refusals are not recorded twice; unexpected failures are outcome 8."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from salus.dicom.failures import list_store_failures, record_store_failure
from salus.errors import Forbidden
from tests.integration.dicom_world import DicomWorld, dicom_world

DATA = Path(__file__).resolve().parents[1] / "data" / "dicom"


@pytest.fixture(scope="module")
def dw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomWorld]:
    with dicom_world("sqlite", tmp_path_factory.mktemp("dicom-failures")) as world:
        yield world


def test_a_refused_c_store_is_recorded_for_the_senders_organization(dw: DicomWorld) -> None:
    ae = AE(ae_title="MOD_A")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert assoc.is_established
    no_study = dcmread(DATA / "CT_small.dcm")
    del no_study.StudyInstanceUID
    sop = str(no_study.SOPInstanceUID)
    assert assoc.send_c_store(no_study).Status == 0xA900
    assoc.release()
    [row] = list_store_failures(dw.services.db, org_id="hosp-a")
    assert row["outcome"] == 4 and row["principal_id"] == "a-feed"
    assert row["detail"]["channel"] == "C-STORE" and row["detail"]["status"] == "0xA900"
    assert row["detail"]["sop_instance_uid"] == sop
    assert row["description"] == f"C-STORE refused: {row['detail']['reason']}"
    assert list_store_failures(dw.services.db, org_id="hosp-b") == []


def test_access_refusals_are_not_recorded_again_and_crashes_are_serious(dw: DicomWorld) -> None:
    before = len(list_store_failures(dw.services.db))
    principal = dw.principal("b-feed")
    record_store_failure(
        dw.archive.audit, principal, "STOW-RS", Forbidden("no"), status=0x0124, data=b"x"
    )
    assert len(list_store_failures(dw.services.db)) == before
    record_store_failure(
        dw.archive.audit, principal, "STOW-RS", RuntimeError("boom"), status=0x0110, data=b"x"
    )
    [row] = list_store_failures(dw.services.db, org_id="hosp-b")
    assert row["outcome"] == 8 and row["detail"]["reason"] == "processing failure"
    assert row["detail"]["sop_instance_uid"] is None  # not readable from these bytes
