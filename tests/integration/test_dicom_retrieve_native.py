"""C-GET and C-MOVE to peers that do not accept the stored transfer syntax (PS3.4 C.4.2,
C.4.3): the instance goes out converted to a native syntax the peer accepted, with
the same pixel values; a peer that accepts neither gets a failed sub-operation."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt

from salus.dicom.dimse import QR_GET, QR_MOVE
from tests.conftest import BACKENDS
from tests.integration.dicom_world import (
    STORE_AE,
    DicomWorld,
    StoreSCP,
    dataset_bytes,
    dicom_world,
    uids,
    web_sample,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: Stored compressed, deflated, big endian and native.
NAMES = [
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "CT_small.dcm",
]


def _dataset(data: bytes, syntax: str) -> Dataset:
    """A received data set (no File Meta) read in the syntax it was sent in."""
    from salus.dicom.parse import part10_from_dimse

    ds = dcmread(BytesIO(data), force=True) if data[128:132] == b"DICM" else None
    if ds is None:
        ds = dcmread(BytesIO(part10_from_dimse(data, "1.2.3", "1.2.3", syntax)))
    return ds


def _same_pixels(received: Dataset, original: bytes) -> None:
    # pydicom gives YBR JPEG data as RGB, as the conversion does (PS3.5 8.2)
    assert np.array_equal(received.pixel_array, dcmread(BytesIO(original)).pixel_array)


def _store_all(dw: DicomWorld) -> dict[str, bytes]:
    files = {name: web_sample(name) for name in NAMES}
    principal = dw.principal()
    for data in files.values():
        assert dw.archive.store(principal, data).outcome == "stored"
    return files


@pytest.mark.parametrize("backend", BACKENDS)
def test_move_to_a_native_only_destination(backend: str, tmp_path: Path) -> None:
    scp = StoreSCP(syntaxes=[EXPLICIT_LE])
    try:
        with dicom_world(
            backend, tmp_path, dicom_move_destinations={STORE_AE: f"127.0.0.1:{scp.port}"}
        ) as dw:
            files = _store_all(dw)
            ae = AE(ae_title="MOD_A")
            ae.add_requested_context(QR_MOVE[1])
            assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
            assert assoc.is_established
            try:
                for data in files.values():
                    identifier = Dataset()
                    identifier.QueryRetrieveLevel = "STUDY"
                    identifier.StudyInstanceUID = uids(data)[0]
                    final = list(assoc.send_c_move(identifier, STORE_AE, QR_MOVE[1]))[-1][0]
                    assert final.Status == 0x0000
            finally:
                assoc.release()
    finally:
        scp.stop()
    for name, data in files.items():
        sop = uids(data)[2]
        assert scp.syntaxes[sop] == EXPLICIT_LE, name
        received = _dataset(scp.received[sop], EXPLICIT_LE)
        assert str(received.SOPInstanceUID) == sop
        if name == "CT_small.dcm":  # stored as Explicit VR Little Endian: sent unchanged
            assert scp.received[sop] == dataset_bytes(data)
        else:
            _same_pixels(received, data)


def _get(dw: DicomWorld, study: str, sop_class: str, syntaxes: list[str]) -> tuple[Any, dict]:
    received: dict[str, tuple[bytes, str]] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = (
            event.request.DataSet.getvalue(),
            str(event.context.transfer_syntax),
        )
        return 0x0000

    ae = AE(ae_title="MOD_A")
    ae.add_requested_context(QR_GET[1])
    ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        dw.port,
        ae_title="SALUS",
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        final = list(assoc.send_c_get(identifier, QR_GET[1]))[-1][0]
    finally:
        assoc.release()
    return final, received


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_converts_to_the_native_syntax_offered(backend: str, tmp_path: Path) -> None:
    with dicom_world(backend, tmp_path) as dw:
        files = _store_all(dw)
        j2k = files["MR_small_jp2klossless.dcm"]
        study, _series, sop = uids(j2k)
        sop_class = str(dcmread(BytesIO(j2k)).SOPClassUID)
        final, received = _get(dw, study, sop_class, [IMPLICIT_LE])
        assert final.Status == 0x0000
        data, syntax = received[sop]
        assert syntax == IMPLICIT_LE
        _same_pixels(_dataset(data, IMPLICIT_LE), j2k)
        # offered only another compressed syntax: nothing sent, a failed sub-operation
        final, received = _get(dw, study, sop_class, ["1.2.840.10008.1.2.4.50"])
        assert received == {}
        assert final.NumberOfFailedSuboperations == 1
        assert final.Status in (0xA702, 0xB000)
        # offered the stored syntax: the stored bytes
        final, received = _get(dw, study, sop_class, ["1.2.840.10008.1.2.4.90", EXPLICIT_LE])
        assert received[sop] == (dataset_bytes(j2k), "1.2.840.10008.1.2.4.90")
