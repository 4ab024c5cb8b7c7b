"""DIMSE transport on loopback, SQLite and PostgreSQL: the DICOM TLS profile
(PS3.15 B.9) with a self-signed certificate made here, and an association that
breaks off in the middle of a C-STORE leaves no instance and no blob behind."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom import dcmread
from pynetdicom import AE, evt
from sqlalchemy import func, select

from salus.db.tables_dicom import dicom_instances
from tests.conftest import BACKENDS
from tests.integration.dicom_world import DicomWorld, dicom_world, web_sample


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(params=BACKENDS)
def tls_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DicomWorld, Path]]:
    cert, key = self_signed(tmp_path)
    with dicom_world(
        request.param, tmp_path, dicom_tls_certfile=cert, dicom_tls_keyfile=key
    ) as world:
        yield world, cert


def count_instances(dw: DicomWorld, sop_uid: str) -> int:
    with dw.services.db.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(dicom_instances)
                .where(dicom_instances.c.sop_instance_uid == sop_uid)
            ).scalar_one()
        )


def test_tls_association_stores_and_plain_tcp_is_refused(
    tls_world: tuple[DicomWorld, Path],
) -> None:
    dw, cert = tls_world
    ct = dcmread(BytesIO(web_sample("CT_small.dcm")))
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="MOD_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ct.SOPClassUID, ct.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dw.port, ae_title="SALUS", tls_args=(client_ctx, "localhost"))
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ct).Status == 0x0000
    finally:
        assoc.release()
    assert count_instances(dw, ct.SOPInstanceUID) == 1
    plain = ae.associate("127.0.0.1", dw.port, ae_title="SALUS")  # no TLS: refused
    assert not plain.is_established
    sock = plain.dul.socket.socket if plain.dul.socket is not None else None
    if sock is not None:  # pynetdicom leaves a failed association's socket open
        sock.close()


@pytest.fixture(params=BACKENDS)
def dw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DicomWorld]:
    with dicom_world(request.param, tmp_path) as world:
        yield world


def test_association_broken_mid_transfer_leaves_nothing(dw: DicomWorld) -> None:
    big = dcmread(BytesIO(web_sample("image_dfl.dcm")))  # 256 kB of pixels, inflated
    sent = {"pdus": 0}
    broke = threading.Event()

    def on_pdu_sent(event: Any) -> None:
        sent["pdus"] += 1
        if sent["pdus"] == 6 and not broke.is_set():  # a few P-DATA fragments in
            broke.set()
            event.assoc.dul.socket.socket.close()

    blobs = Path(dw.services.settings.blob_path())
    before = sorted(p.name for p in blobs.rglob("*") if p.is_file())
    ae = AE(ae_title="MOD_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(big.SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate(
        "127.0.0.1", dw.port, ae_title="SALUS", evt_handlers=[(evt.EVT_PDU_SENT, on_pdu_sent)]
    )
    assert assoc.is_established
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    for item in assoc.acceptor.user_information:  # send the data set in many P-DATA PDUs
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 4096
    try:
        assoc.send_c_store(big)
    except Exception:  # noqa: S110 - the socket was closed under the sender on purpose
        pass
    finally:
        if assoc.is_alive():
            assoc.abort()
    assert broke.is_set()
    assert count_instances(dw, big.SOPInstanceUID) == 0
    assert sorted(p.name for p in blobs.rglob("*") if p.is_file()) == before
    # The listener carries on: a new association stores the same instance whole.
    ae2 = AE(ae_title="MOD_A")
    ae2.add_requested_context(big.SOPClassUID, "1.2.840.10008.1.2.1")
    again = ae2.associate("127.0.0.1", dw.port, ae_title="SALUS")
    assert again.is_established
    try:
        assert again.send_c_store(big).Status == 0x0000
    finally:
        again.release()
    assert count_instances(dw, big.SOPInstanceUID) == 1
