"""Authentication of non-HTTP peers (PS3.15 Annex B TLS; MLLP over TLS).

A DICOM association is recognised by its calling AE title, optionally tied to
a TLS client certificate (SHA-256 fingerprint of the DER certificate) and a
source network; an MLLP connection by its TLS client certificate or by its
source address in an allow-list. Each identity maps to a client of the
directory, whose organization and roles then apply as for any other client.
"""

from __future__ import annotations

import hashlib
import ipaddress

from sqlalchemy import select

from salus.db.engine import Database
from salus.db.tables import edge_identities
from salus.errors import NotAuthenticated
from salus.security.directory import Directory
from salus.security.principal import AuthMethod, Principal

__all__ = ["EdgeAuthenticator", "cert_fingerprint"]


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _in_network(address: str | None, network: str | None) -> bool:
    if network is None:
        return True
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


class EdgeAuthenticator:
    def __init__(self, db: Database, directory: Directory) -> None:
        self.db = db
        self.directory = directory

    def dicom(self, calling_ae: str, address: str | None, cert_der: bytes | None) -> Principal:
        """The principal of a DICOM association, or :class:`NotAuthenticated` (reject)."""
        fingerprint = cert_fingerprint(cert_der) if cert_der else None
        with self.db.read() as conn:
            rows = (
                conn.execute(
                    select(edge_identities).where(
                        edge_identities.c.kind == "dicom",
                        edge_identities.c.active.is_(True),
                        edge_identities.c.ae_title == calling_ae.strip(),
                    )
                )
                .mappings()
                .all()
            )
        for row in rows:
            if row["cert_sha256"] is not None and row["cert_sha256"] != fingerprint:
                continue
            if not _in_network(address, row["address"]):
                continue
            method = AuthMethod.TLS_CERT if row["cert_sha256"] else AuthMethod.AE_TITLE
            return self.directory.client_principal(str(row["client_id"]), method, address)
        raise NotAuthenticated("The calling AE title is not known here.")

    def mllp(self, address: str | None, cert_der: bytes | None) -> Principal:
        """The principal of an MLLP connection: certificate first, then address."""
        fingerprint = cert_fingerprint(cert_der) if cert_der else None
        with self.db.read() as conn:
            rows = (
                conn.execute(
                    select(edge_identities).where(
                        edge_identities.c.kind == "mllp", edge_identities.c.active.is_(True)
                    )
                )
                .mappings()
                .all()
            )
        by_cert = [r for r in rows if fingerprint and r["cert_sha256"] == fingerprint]
        for row in by_cert:
            if _in_network(address, row["address"]):
                return self.directory.client_principal(
                    str(row["client_id"]), AuthMethod.TLS_CERT, address
                )
        for row in rows:
            if (
                row["cert_sha256"] is None
                and row["address"]
                and _in_network(address, row["address"])
            ):
                return self.directory.client_principal(
                    str(row["client_id"]), AuthMethod.ADDRESS, address
                )
        raise NotAuthenticated("This sender is not known here.")
