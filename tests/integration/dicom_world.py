"""A Salus DIMSE listener on a loopback port for the DICOM integration tests.

Built on the security test world (hospitals A and B with their integration
clients); AE ``MOD_A`` belongs to hospital A, ``MOD_B`` to hospital B.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from salus.dicom.archive import DicomArchive
from salus.dicom.dimse import DimseListener
from salus.jobs import Worker
from salus.security.principal import Principal
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from tests.conftest import backend_database, settings_for
from tests.integration.security_world import CLIENTS, ORGS, SYSTEM

DATA = Path(__file__).resolve().parents[1] / "data" / "dicom"
STORE_AE = "STORE_SCP"


@dataclass
class DicomWorld:
    services: Services
    listener: DimseListener

    @property
    def archive(self) -> DicomArchive:
        assert self.services.dicom is not None
        return self.services.dicom

    def principal(self, client_id: str = "a-feed") -> Principal:
        return self.services.directory.client_principal(client_id)

    @property
    def port(self) -> int:
        return self.listener.port

    def drain_jobs(self) -> int:
        services = self.services
        return Worker(services.jobs, services.job_handlers).drain()

    def associate(self, calling: str = "MOD_A", **contexts: Any) -> Association:
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for sop_class in contexts.get("classes", []):
            ae.add_requested_context(sop_class, contexts.get("syntaxes"))
        return ae.associate("127.0.0.1", self.port, ae_title="SALUS", **contexts.get("kw", {}))


@contextmanager
def dicom_world(backend: str, folder: Path, **overrides: Any) -> Iterator[DicomWorld]:
    """Services (no HTTP app) with the test network's organizations and clients,
    and a DIMSE listener on a free loopback port."""
    values: dict[str, Any] = {
        "dicom_port": 0,
        "dicom_stable_seconds": 0.0,
        "jobs_enabled": False,
        "audit_checkpoint_seconds": 3600,
    }
    values.update(overrides)
    with backend_database(backend, folder) as (url, schema):
        settings = settings_for(url, schema, folder / "data", **values)
        FileKeyProvider.create(settings.key_path())
        services = Services.build(settings)
        try:
            directory = services.directory
            for org_id, name, kind in ORGS:
                directory.create_organization(SYSTEM, org_id, name, kind)
            for client_id, (org_id, roles) in CLIENTS.items():
                directory.create_client(
                    SYSTEM,
                    client_id=client_id,
                    org_id=org_id,
                    name=client_id,
                    auth_method="client_secret",
                    roles=roles,
                )
            directory.add_edge_identity(SYSTEM, kind="dicom", client_id="a-feed", ae_title="MOD_A")
            directory.add_edge_identity(SYSTEM, kind="dicom", client_id="b-feed", ae_title="MOD_B")
            listener = DimseListener(services)
            listener.start_sync()
            try:
                yield DicomWorld(services, listener)
            finally:
                listener.stop_sync()
        finally:
            services.close()


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def dataset_bytes(part10: bytes) -> bytes:
    """The data set part of a Part-10 file (after the File Meta Information)."""
    from salus.dicom.parse import dataset_offset

    return part10[dataset_offset(part10) :]


def read(name: str) -> Dataset:
    return dcmread(DATA / name)


def nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on a pynetdicom socket (PEERS.md: without
    it every exchange waits for the 40 ms delayed ACK on loopback)."""
    import socket

    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StoreSCP:
    """A pynetdicom Storage SCP on loopback that keeps the raw data sets it receives."""

    def __init__(self, syntaxes: list[str] | None = None) -> None:
        """``syntaxes``: the transfer syntaxes accepted (default: all, explicit first)."""
        self.received: dict[str, bytes] = {}
        self.syntaxes: dict[str, str] = {}
        self.ae = AE(ae_title=STORE_AE)
        from salus.dicom.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

        explicit_first = sorted(TRANSFER_SYNTAXES, key=lambda ts: ts != "1.2.840.10008.1.2.1")
        for sop_class in STORAGE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, syntaxes or explicit_first)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, nodelay)],
        )
        assert self.server is not None
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        self.received[sop] = event.request.DataSet.getvalue()
        self.syntaxes[sop] = str(event.context.transfer_syntax)
        return 0x0000

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()


# -- DICOMweb ------------------------------------------------------------------------
#: One file per transfer syntax (explicit/implicit LE, big endian, deflated, RLE,
#: JPEG baseline and extended, JPEG-LS, JPEG 2000 lossless and lossy, HTJ2K), and
#: one without pixel data.
WEB_SAMPLES = [
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
    "HTJ2K_08_RGB.dcm",
    "rtplan.dcm",
]


_WEB_CACHE: dict[str, bytes] = {}


def web_sample(name: str) -> bytes:
    """A sample with UIDs of its own (several samples are one image in different
    transfer syntaxes, with the same SOP Instance UID; one has no study UID),
    written by pydicom in its own transfer syntax, pixel data untouched."""
    if name not in _WEB_CACHE:
        from io import BytesIO

        from pydicom.uid import generate_uid

        ds = dcmread(DATA / name)
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", name])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", name])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["instance", name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "WEB-" + name.split(".")[0][:20]
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        _WEB_CACHE[name] = buffer.getvalue()
    return _WEB_CACHE[name]


def stow_body(files: list[bytes], boundary: str = "salus-test-boundary") -> tuple[bytes, str]:
    """A multipart/related STOW-RS body and its Content-Type."""
    body = b""
    for data in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response (an independent, simple parser)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"')
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter), body[:80]
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--")
    parts = []
    for chunk in body.split(b"\r\n" + delimiter)[:-1]:
        chunk = chunk[len(delimiter) :] if chunk.startswith(delimiter) else chunk
        head, _, payload = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts


def uids(data: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of a Part-10 file."""
    from io import BytesIO

    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
