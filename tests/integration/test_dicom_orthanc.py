"""Interoperability with Orthanc (Debian package ``orthanc``) on loopback, both backends.

Orthanc runs as a real process with a generated configuration (free ports, its
own storage folder, no authentication, ``TCP_NODELAY=1`` as PEERS.md asks for
its dcmtk sockets). Three exchanges:

* **Orthanc sends to Salus** (``POST /modalities/salus/store``, C-STORE with
  Orthanc as SCU): Salus keeps the data sets exactly as they came off the wire.
* **Orthanc queries Salus and asks for a C-MOVE to itself** (``POST
  /modalities/salus/query``, ``/queries/{id}/retrieve``): Salus answers C-FIND
  and moves the study to the destination ``SALUS_DICOM_MOVE_DESTINATIONS``
  names; Orthanc then holds the same data set bytes Salus stored.
* **A third party's C-MOVE with Orthanc as destination** (pynetdicom SCU).

Orthanc's sender (dcmtk) re-encodes what it sends: it drops Data Set Trailing
Padding, writes sequences with defined lengths and encapsulated Pixel Data as
OB. The samples are written that way first (:func:`dcmtk_form`), so that
"byte-identical" compares with the original file; Orthanc deflates again what
it stores, so deflated data sets are compared inflated. Orthanc 1.10 does not
know HTJ2K, so that sample is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from salus.dicom.dimse import QR_MOVE
from tests.conftest import BACKENDS, free_port
from tests.integration.dicom_world import (
    WEB_SAMPLES,
    DicomWorld,
    dataset_bytes,
    dicom_world,
    uids,
    web_sample,
)
from tests.integration.security_world import SYSTEM

ORTHANC = shutil.which("Orthanc")
pytestmark = [
    pytest.mark.skipif(
        ORTHANC is None,
        reason="Orthanc is not installed (apt-get install orthanc; .ci/run installs it)",
    ),
    pytest.mark.timeout(120),
]
ORTHANC_AE = "ORTHANC"
#: Orthanc 1.10.1 (dcmtk 3.6.7) answers "Unsupported transfer syntax" for HTJ2K.
SAMPLES = [name for name in WEB_SAMPLES if not name.startswith("HTJ2K")]


def dcmtk_form(data: bytes) -> bytes:
    """A sample as dcmtk writes it: no trailing padding, sequences of defined length,
    encapsulated Pixel Data as OB (PS3.5 A.4; two samples say OW)."""
    ds = dcmread(BytesIO(data))
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    if ds.file_meta.TransferSyntaxUID.is_encapsulated and "PixelData" in ds:
        ds["PixelData"].VR = "OB"
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = False
            for item in elem.value:
                item.is_undefined_length_sequence_item = False
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def inflated(part10: bytes) -> bytes:
    """The data set of a file, inflated when deflated (Orthanc deflates again what
    it stores, with its own zlib settings)."""
    dataset = dataset_bytes(part10)
    if dcmread(BytesIO(part10), stop_before_pixels=True).file_meta.TransferSyntaxUID.is_deflated:
        return zlib.decompress(dataset, -15)
    return dataset


class Orthanc:
    """One Orthanc process and its REST API."""

    def __init__(self, folder: Path, modalities: dict[str, list[Any]], dicom_port: int) -> None:
        self.http_port, self.dicom_port = free_port(), dicom_port
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "salus-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageCompression": False,
            "DicomModalities": modalities,
            "Plugins": [],
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        self.base = f"http://127.0.0.1:{self.http_port}"
        assert ORTHANC is not None
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [ORTHANC, str(folder / "orthanc.json")],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.http = httpx.Client(base_url=self.base, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log.read_text()[-2000:]}")
            try:
                if self.http.get("/system").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start in 30 s")

    def post(self, path: str, **kw: Any) -> Any:
        response = self.http.post(path, **kw)
        assert response.status_code == 200, (path, response.text[:500])
        return response.json()

    def file(self, orthanc_id: str) -> bytes:
        response = self.http.get(f"/instances/{orthanc_id}/file")
        assert response.status_code == 200
        return response.content

    def instance_id(self, sop_uid: str) -> str | None:
        found = self.post(
            "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}
        )
        return str(found[0]) if found else None

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def salus_and_orthanc(backend: str, folder: Path) -> Iterator[tuple[DicomWorld, Orthanc]]:
    """A Salus listener that knows Orthanc (edge identity of hospital A's feed, move
    destination) and an Orthanc that knows Salus (modality ``salus``)."""
    orthanc_port = free_port()
    with dicom_world(
        backend, folder, dicom_move_destinations={ORTHANC_AE: f"127.0.0.1:{orthanc_port}"}
    ) as dw:
        dw.services.directory.add_edge_identity(
            SYSTEM, kind="dicom", client_id="a-feed", ae_title=ORTHANC_AE
        )
        orthanc = Orthanc(
            folder / "orthanc", {"salus": ["SALUS", "127.0.0.1", dw.port]}, orthanc_port
        )
        try:
            yield dw, orthanc
        finally:
            orthanc.stop()


def _samples() -> dict[str, bytes]:
    return {name: dcmtk_form(web_sample(name)) for name in SAMPLES}


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthanc_sends_to_salus_byte_identical(backend: str, tmp_path: Path) -> None:
    files = _samples()
    with salus_and_orthanc(backend, tmp_path) as (dw, orthanc):
        ids = [orthanc.post("/instances", content=data)["ID"] for data in files.values()]
        job = orthanc.post("/modalities/salus/store", json={"Resources": ids, "Synchronous": True})
        assert job["InstancesCount"] == len(files) and job["FailedInstancesCount"] == 0
        principal = dw.principal()
        for name, data in files.items():
            _study, _series, sop = uids(data)
            refs = dw.archive.instances(principal, "IMAGE", {"SOPInstanceUID": sop})
            assert len(refs) == 1, name
            expected_ts = str(dcmread(BytesIO(data)).file_meta.TransferSyntaxUID)
            assert refs[0].transfer_syntax_uid == expected_ts, name
            assert dataset_bytes(bytes(dw.archive.read(refs[0]))) == dataset_bytes(data), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthanc_queries_salus_and_moves_to_itself(backend: str, tmp_path: Path) -> None:
    files = _samples()
    with salus_and_orthanc(backend, tmp_path) as (dw, orthanc):
        principal = dw.principal()
        for data in files.values():
            assert dw.archive.store(principal, data).outcome == "stored"
        query = orthanc.post(
            "/modalities/salus/query",
            json={
                "Level": "Study",
                "Query": {"PatientID": "WEB-*", "StudyInstanceUID": "", "PatientName": ""},
            },
        )
        answers = orthanc.http.get(f"/queries/{query['ID']}/answers?expand").json()
        studies = {a["0020,000d"]["Value"] for a in answers}
        assert studies == {uids(data)[0] for data in files.values()}
        moved = orthanc.post(
            f"/queries/{query['ID']}/retrieve",
            json={"TargetAet": ORTHANC_AE, "Synchronous": True},
        )
        assert moved is not None
        for name, data in files.items():
            orthanc_id = orthanc.instance_id(uids(data)[2])
            assert orthanc_id is not None, name
            # Salus sent the bytes it stored, which are the original file's, in
            # the stored transfer syntax (each offered in a context of its own).
            received = orthanc.file(orthanc_id)
            assert inflated(received) == inflated(data), name
            assert (
                dcmread(BytesIO(received)).file_meta.TransferSyntaxUID
                == dcmread(BytesIO(data)).file_meta.TransferSyntaxUID
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_third_party_move_to_orthanc(backend: str, tmp_path: Path) -> None:
    files = _samples()
    wanted = files["CT_small.dcm"]
    with salus_and_orthanc(backend, tmp_path) as (dw, orthanc):
        principal = dw.principal()
        for data in files.values():
            dw.archive.store(principal, data)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = uids(wanted)[0]
        ae = AE(ae_title="MOD_A")
        ae.add_requested_context(QR_MOVE[1])
        assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")
        assert assoc.is_established
        try:
            responses = list(assoc.send_c_move(identifier, ORTHANC_AE, QR_MOVE[1]))
        finally:
            assoc.release()
        final = responses[-1][0]
        assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
        assert orthanc.http.get("/statistics").json()["CountInstances"] == 1
        orthanc_id = orthanc.instance_id(uids(wanted)[2])
        assert orthanc_id is not None
        assert dataset_bytes(orthanc.file(orthanc_id)) == dataset_bytes(wanted)
