"""A real ``salus serve`` process with ``SALUS_DICOM_ENABLED=true`` on free ports, on
SQLite and PostgreSQL: the DIMSE listener answers C-ECHO and C-STORE, and the
``dicomweb-client`` package (the reference Python DICOMweb client) stores, queries and
retrieves through DICOMweb, reading back byte-identical instances."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from io import BytesIO
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from pydicom import dcmread
from pynetdicom import AE

from salus.config import Settings
from salus.services import Services
from tests.conftest import free_port
from tests.integration.dicom_world import uids, web_sample
from tests.integration.security_world import SYSTEM

pytestmark = pytest.mark.timeout(120)


def _env(settings: Settings, http_port: int, dicom_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env.update(
        SALUS_DATA_DIR=str(settings.data_dir),
        SALUS_DICOM_ENABLED="true",
        SALUS_DICOM_PORT=str(dicom_port),
        SALUS_PUBLIC_URL=f"http://127.0.0.1:{http_port}",
        SALUS_JOBS_POLL_INTERVAL="0.1",
        SALUS_LOG_FORMAT="json",
    )
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return env


def _setup(settings: Settings) -> str:
    """Hospital A, its integration client (secret returned) and its modality's AE."""
    services = Services.build(settings)
    try:
        directory = services.directory
        directory.create_organization(SYSTEM, "hosp-a", "Hospital A", "hospital")
        client = directory.create_client(
            SYSTEM,
            client_id="a-feed",
            org_id="hosp-a",
            name="a-feed",
            auth_method="client_secret",
            roles=["hospital_integration"],
        )
        directory.add_edge_identity(SYSTEM, kind="dicom", client_id="a-feed", ae_title="MOD_A")
        assert client.secret
        return client.secret
    finally:
        services.close()


def _wait(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_serve_runs_dimse_and_dicomweb(settings_factory: Any) -> None:
    from dicomweb_client.api import DICOMwebClient

    settings: Settings = settings_factory()
    http_port, dicom_port = free_port(), free_port()
    env = _env(settings, http_port, dicom_port)
    salus = [sys.executable, "-m", "salus"]
    subprocess.run([*salus, "init"], env=env, check=True, capture_output=True, timeout=60)
    secret = _setup(settings)
    proc = subprocess.Popen(
        [*salus, "serve", "--port", str(http_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        def listening() -> bool:
            # /ready may be answered by an HTTP-only worker before worker 0 (which
            # runs the DIMSE listener) has started: wait for the DICOM port too.
            try:
                socket.create_connection(("127.0.0.1", dicom_port), timeout=1).close()
                return True
            except OSError:
                return False

        _wait(ready, 30)
        _wait(listening, 30)
        # DIMSE: C-ECHO and C-STORE as the registered modality.
        ct = dcmread(BytesIO(web_sample("CT_small.dcm")))
        ae = AE(ae_title="MOD_A")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.add_requested_context(ct.SOPClassUID, ct.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="SALUS")
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(ct).Status == 0x0000
        finally:
            assoc.release()

        # DICOMweb with dicomweb-client and a client-credentials token.
        token = httpx.post(
            f"{base}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "a-feed",
                "client_secret": secret,
            },
        ).json()["access_token"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        client = DICOMwebClient(f"{base}/dicomweb", session=session)
        rle = dcmread(BytesIO(web_sample("MR_small_RLE.dcm")))
        client.store_instances([rle])
        study, series, instance = uids(web_sample("CT_small.dcm"))
        found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert [f["0020000D"]["Value"][0] for f in found] == [study]
        assert len(client.search_for_instances(study_instance_uid=study)) == 1
        got = client.retrieve_instance(
            study, series, instance, media_types=(("application/dicom", "*"),)
        )
        assert got.SOPInstanceUID == instance
        assert np.array_equal(got.pixel_array, ct.pixel_array)
        metadata = client.retrieve_study_metadata(study)
        assert metadata[0]["00080018"]["Value"] == [instance]
        pixels = client.retrieve_bulkdata(metadata[0]["7FE00010"]["BulkDataURI"])
        assert pixels[0] == ct.PixelData
        r_study, r_series, r_instance = uids(web_sample("MR_small_RLE.dcm"))
        frames = client.retrieve_instance_frames(
            r_study, r_series, r_instance, frame_numbers=[1], media_types=("image/dicom-rle",)
        )
        from pydicom.encaps import generate_frames

        assert frames == [next(generate_frames(rle.PixelData, number_of_frames=1))]
        rendered = client.retrieve_instance_rendered(
            study, series, instance, media_types=("image/png",)
        )
        assert rendered.startswith(b"\x89PNG")
        # Byte-identical through WADO-RS: the file dicomweb-client stored.
        raw = httpx.get(
            f"{base}/dicomweb/studies/{r_study}/series/{r_series}/instances/{r_instance}",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            },
        )
        assert raw.status_code == 200
        assert rle.PixelData in raw.content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert "CompressedSamples" not in stderr  # no patient name in the logs
