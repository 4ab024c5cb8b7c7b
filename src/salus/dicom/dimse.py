"""The DIMSE edge: a pynetdicom SCP inside ``salus serve`` (PS3.4 Annexes A, B, C; PS3.7).

Services: Verification (C-ECHO); Storage of every storage SOP class in every
transfer syntax pydicom knows, data sets kept byte for byte as received;
Patient Root and Study Root Query/Retrieve FIND, MOVE and GET at PATIENT,
STUDY, SERIES and IMAGE level, relational (C.4.1.2.2.1); C-CANCEL stops a
FIND, MOVE or GET between two responses.

Who is calling: the calling AE title must be an active edge identity of a
client (``salus client`` / :class:`~salus.security.edges.EdgeAuthenticator`,
optionally tied to a TLS client certificate and a network); other AE titles
are rejected at association time (A-ASSOCIATE-RJ, "calling AE title not
recognized") unless ``SALUS_DICOM_UNKNOWN_AE_CLIENT`` names the client they
act as. The client's organization and roles then decide every operation
through the archive (policy engine, audit). An error raised by the archive
becomes the DIMSE status of its class (:mod:`salus.errors`); anything else
becomes 0xC000/0xC001 and is logged without data; the association carries on.

Retrieval sends the stored data set bytes unchanged when the peer accepted
the stored transfer syntax (:func:`_encode_raw`); otherwise the instance is
converted to a native syntax the peer accepted (:func:`outgoing_instance`:
decompressed, inflated or byte-swapped, never re-compressed), and a peer that
accepts neither gets a failed sub-operation. C-MOVE sub-associations offer
each stored syntax in a context of its own, plus the native ones.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom import association as pynetdicom_association
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.utils import make_target

from salus.dicom.archive import DicomArchive
from salus.dicom.failures import record_store_failure
from salus.dicom.matching import KEYS, Level, QueryValue
from salus.dicom.parse import NEWER_TRANSFER_SYNTAXES, dataset_offset, part10_from_dimse
from salus.dicom.query import InstanceRef, Match
from salus.dicom.transcode import NATIVE, NotConvertible, to_native
from salus.dicom.wire import find_response, requested_keys
from salus.dicom.wire import install as install_wire_encoders
from salus.errors import NotAuthenticated, SalusError
from salus.security.principal import Principal
from salus.thirdparty import quiet_pynetdicom

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from salus.services import Services

__all__ = [
    "DimseListener",
    "RawInstance",
    "accepted_syntaxes",
    "identifier_values",
    "outgoing_instance",
]

log = logging.getLogger("salus.dicom.dimse")


def _retired_storage_classes() -> set[str]:
    """Storage SOP classes of pydicom's dictionary that pynetdicom leaves out (retired
    and trial ones: old ultrasound, nuclear medicine, standalone curves…): an
    archive still receives them from old modalities and migrations."""
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom.service_class import StorageServiceClass

    known = {str(u) for u in getattr(pynetdicom_sop_class, "_STORAGE_CLASSES").values()}  # noqa: B009
    found: set[str] = set()
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind != "SOP Class" or "Storage" not in name or "Commitment" in name:
            continue
        if uid == "1.2.840.10008.1.3.10" or uid in known:  # Media Storage Directory: no
            continue
        # pynetdicom must know the class as Storage to receive it, and to send it
        # on C-GET/C-MOVE.
        try:
            pynetdicom_sop_class.register_uid(
                uid, f"Salus{keyword or 'Storage'}_{len(found)}", StorageServiceClass
            )
        except Exception:  # noqa: S112 - a class pynetdicom refuses stays unsupported
            continue
        found.add(uid)
    return found


STORAGE_SOP_CLASSES: list[str] = sorted(
    {str(uid) for uid in getattr(pynetdicom_sop_class, "_STORAGE_CLASSES").values()}  # noqa: B009
    | _retired_storage_classes()
)
_NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
#: Accepted in this order of preference (pynetdicom takes the acceptor's order):
#: a compressed or deflated syntax the sender proposes means it holds the data
#: that way, so accepting it keeps the bytes as they are; native syntaxes last.
TRANSFER_SYNTAXES = (
    [str(uid) for uid in AllTransferSyntaxes if str(uid) not in _NATIVE]
    + [uid for uid in NEWER_TRANSFER_SYNTAXES if uid not in AllTransferSyntaxes]
    + list(_NATIVE)
)
VERIFICATION = "1.2.840.10008.1.1"
#: PS3.4 C.6.1.3 Patient Root and C.6.2.3 Study Root Query/Retrieve SOP classes.
QR_FIND = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
QR_MOVE = ("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2")
QR_GET = ("1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3")
_PENDING = 0xFF00
_CANCEL = 0xFE00
_PRINCIPAL = "_salus_principal"
_COMBINED = "_salus_combined_datetime"


class RawInstance(Dataset):
    """A stored instance to send by C-STORE: carries the Part-10 bytes, so that the
    data set goes out exactly as it was received (see :func:`_encode_raw`)."""

    def __init__(self, ref: InstanceRef, part10: bytes | bytearray) -> None:
        super().__init__()
        self.SOPClassUID = UID(ref.sop_class_uid)
        self.SOPInstanceUID = UID(ref.sop_instance_uid)
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(ref.transfer_syntax_uid)
        object.__setattr__(self, "_salus_part10", bytes(part10))
        object.__setattr__(self, "_salus_offset", ref.dataset_offset)


_original_encode: Any = getattr(pynetdicom_association, "encode")  # noqa: B009


def _encode_raw(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's data set encoder, short-circuited for :class:`RawInstance`."""
    part10: bytes | None = getattr(ds, "_salus_part10", None)
    if part10 is None:
        encoded: bytes | None = _original_encode(ds, is_implicit_vr, is_little_endian, deflated)
        return encoded
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if (ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == (
        is_implicit_vr,
        is_little_endian,
        deflated,
    ):
        return part10[int(ds._salus_offset) :]
    full = dcmread(BytesIO(part10))  # another native syntax was negotiated: re-encode
    reencoded: bytes | None = _original_encode(full, is_implicit_vr, is_little_endian, deflated)
    return reencoded


def _install_raw_encoder() -> None:
    setattr(pynetdicom_association, "encode", _encode_raw)  # noqa: B010


def identifier_values(identifier: Dataset) -> tuple[str, dict[str, QueryValue]]:
    """The query level and the keys of a C-FIND/C-MOVE/C-GET identifier."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    keys: dict[str, QueryValue] = {}
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if elem.VR == "SQ":
            items: list[dict[str, Any]] = []
            for item in elem.value or []:
                items.append(
                    {
                        sub.keyword: "" if sub.value is None else str(sub.value)
                        for sub in item
                        if sub.keyword
                    }
                )
            keys[keyword] = items
            continue
        value = elem.value
        if value is None:
            keys[keyword] = ""
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            keys[keyword] = "\\".join(str(v) for v in value)
        else:
            keys[keyword] = str(value)
    return level, keys


def _response(identifier: Dataset, level: str, match: Match) -> Dataset:
    """A C-FIND response identifier: every requested key, with its value or empty."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        value = match.attributes.get(keyword)
        if elem.VR == "SQ":
            items = value if isinstance(value, list) else []
            seq = []
            for item in items:
                sub = Dataset()
                for name, text in item.items():
                    setattr(sub, name, text)
                seq.append(sub)
            setattr(ds, keyword, Sequence(seq))
            continue
        if value is None:
            ds.add_new(elem.tag, elem.VR, None)
        elif keyword in KEYS and KEYS[keyword].vr in ("IS", "US"):
            setattr(ds, keyword, int(value))
        else:
            text = str(value)
            setattr(ds, keyword, text.split("\\") if "\\" in text else text)
    return ds


def _status(exc: BaseException, default: int = 0xC000) -> int:
    if isinstance(exc, SalusError):
        return int(exc.dimse_status)
    log.error("DIMSE handler failed: %s", type(exc).__name__)
    return default


#: How long a process that serves more associations than another one waits for
#: that one to take a new connection before it takes it itself (seconds).
BUSY_ACCEPT_WAIT = 0.1
#: The listening socket handed over by the supervisor (:mod:`salus.server.workers`)
#: when several server processes run the DIMSE listener on one port.
_ADOPTED: socket.socket | None = None
#: The open associations of each of those processes (shared memory, one slot
#: each) and this process's slot.
_LOADS: Any = None
_SLOT = 0


def adopt_listening_socket(sock: socket.socket, loads: Any = None, slot: int = 0) -> None:
    """Serve DIMSE on ``sock`` (bound and listening, shared with the other server
    processes) instead of binding ``SALUS_DICOM_PORT``; called in a worker before
    its services are built. The listener then runs in this process even when it
    is not the primary. ``loads`` (a shared integer array) and ``slot`` let the
    processes balance new associations (``SharedSocketServer.get_request``)."""
    global _ADOPTED, _LOADS, _SLOT
    _ADOPTED, _LOADS, _SLOT = sock, loads, slot


def _connected(sock: socket.socket) -> bool:
    """Open and connected (pynetdicom skips ``close`` when ``shutdown`` fails on a
    connection the peer already dropped)."""
    if sock.fileno() < 0:
        return False
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _shared_server_class() -> type[ThreadedAssociationServer]:
    from pynetdicom.transport import ThreadedAssociationServer as Threaded

    class SharedSocketServer(Threaded):
        """pynetdicom's threaded server on an adopted listening socket.

        The socket is non-blocking: every process waiting on it wakes when a
        connection arrives and one of them gets it; the others' ``accept`` fails
        with ``EAGAIN``, which :mod:`socketserver` ignores (an ``OSError``), so no
        accept loop blocks on a connection another process took."""

        def server_bind(self) -> None:
            assert _ADOPTED is not None  # noqa: S101 - only built with a socket
            if self.socket is not None:
                self.socket.close()  # the one TCPServer made: never bound
            self.socket = _ADOPTED
            self.socket.setblocking(False)
            self.server_address = self.socket.getsockname()

        def server_activate(self) -> None:
            pass  # listening already (the supervisor called listen)

        def server_close(self) -> None:
            # Close this process's descriptor only: ``shutdown(SHUT_RDWR)`` (what
            # pynetdicom does) would stop the socket for the other processes too.
            if self.socket is not None:
                self.socket.close()

        def _open(self) -> int:
            """How many connections this process accepted are still open (weakly
            held: a socket pynetdicom let go of is not kept open by this count);
            published in this process's slot of the shared loads."""
            served: weakref.WeakSet[socket.socket] = self.__dict__.setdefault(
                "_salus_served", weakref.WeakSet()
            )
            count = sum(1 for sock in list(served) if _connected(sock))
            if _LOADS is not None:
                _LOADS[_SLOT] = count
            return count

        def service_actions(self) -> None:
            super().service_actions()
            self._open()  # ended associations leave the load within a poll interval

        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            # The least loaded process first: the kernel wakes every process waiting
            # on the socket and which one wins the accept is a race, which a process
            # whose GIL is busy setting up its last association loses (3 to 1 splits
            # of four associations were common). A process that serves more
            # associations than another one leaves it the connection for up to
            # BUSY_ACCEPT_WAIT; if it is still there afterwards, it takes it.
            mine = self._open()
            if _LOADS is not None:
                deadline = time.monotonic() + BUSY_ACCEPT_WAIT
                while time.monotonic() < deadline:
                    others = [n for slot, n in enumerate(_LOADS) if slot != _SLOT]
                    if not others or mine <= min(others):
                        break
                    time.sleep(0.005)
            client, address = super().get_request()
            client.setblocking(True)  # pynetdicom reads with select and timeouts
            self.__dict__["_salus_served"].add(client)
            self._open()
            return client, address

    return SharedSocketServer


class DimseListener:
    """The DIMSE SCP (a :class:`~salus.services.Listener`)."""

    name = "dicom-dimse"

    def __init__(self, services: Services) -> None:
        assert services.dicom is not None  # noqa: S101 - installed before the listener
        self.services = services
        self.archive: DicomArchive = services.dicom
        self.settings = services.settings
        self.server: ThreadedAssociationServer | None = None
        self.port: int = self.settings.dicom_port
        #: Run in every server process that was handed the DICOM socket, not only
        #: in the primary (``salus.server.app``; ``SALUS_DICOM_PROCESSES``).
        self.every_process = _ADOPTED is not None
        self.ae = self._build_ae()

    # -- set-up ------------------------------------------------------------------------
    def _build_ae(self) -> AE:
        quiet_pynetdicom()
        _install_raw_encoder()
        install_wire_encoders()
        settings = self.settings
        ae = AE(ae_title=settings.dicom_ae_title)
        ae.maximum_associations = settings.dicom_max_associations
        ae.acse_timeout = settings.dicom_timeout
        ae.dimse_timeout = settings.dicom_timeout
        ae.network_timeout = settings.dicom_timeout
        ae.maximum_pdu_size = 0  # no limit on what we receive
        ae.require_called_aet = False
        ae.add_supported_context(VERIFICATION)
        for sop_class in STORAGE_SOP_CLASSES:
            # scu_role/scp_role: accept the SCP role a C-GET requestor asks for.
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for model in (*QR_FIND, *QR_MOVE, *QR_GET):
            ae.add_supported_context(model)
        if settings.dicom_unknown_ae_client is None:
            ae._require_calling_aet = _KnownAETitles(self)
        return ae

    def known_ae_titles(self) -> list[str]:
        from sqlalchemy import select

        from salus.db.tables import edge_identities

        e = edge_identities.c
        with self.services.db.read() as conn:
            rows = conn.execute(
                select(e.ae_title).where(e.kind == "dicom", e.active.is_(True))
            ).scalars()
            return sorted({str(t).strip() for t in rows if t})

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if settings.dicom_tls_certfile is None or settings.dicom_tls_keyfile is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.9 (BCP 195)
        ctx.load_cert_chain(str(settings.dicom_tls_certfile), str(settings.dicom_tls_keyfile))
        if settings.dicom_tls_cafile is not None:
            ctx.load_verify_locations(cafile=str(settings.dicom_tls_cafile))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_SOP_EXTENDED, self._on_extended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]

    # -- lifecycle ---------------------------------------------------------------------
    def start_sync(self) -> None:
        if _ADOPTED is not None:
            self._start_shared()
            return
        server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            ssl_context=self._ssl_context(),
            evt_handlers=self.handlers(),
        )
        assert server is not None  # noqa: S101 - non-blocking start returns the server
        self.server = server
        self.port = int(server.server_address[1])
        log.info("DIMSE listener on port %s as %s", self.port, self.settings.dicom_ae_title)

    def _start_shared(self) -> None:
        """As ``AE.start_server(block=False)``, on the adopted socket (pynetdicom's
        ``start_server`` takes no server class; ``make_server`` does)."""
        server = self.ae.make_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            ssl_context=self._ssl_context(),
            evt_handlers=self.handlers(),
            server_class=_shared_server_class(),
        )
        self.ae._servers.append(server)  # AssociationServer.shutdown removes it
        threading.Thread(
            target=make_target(server.serve_forever), name="salus-dimse-acceptor", daemon=True
        ).start()
        self.server = server
        self.port = int(server.server_address[1])
        log.info("DIMSE listener on shared port %s as %s", self.port, self.settings.dicom_ae_title)

    def stop_sync(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    # -- associations ------------------------------------------------------------------
    @staticmethod
    def _on_connect(event: Event) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:  # PEERS.md: no 40 ms delayed-ACK stalls on loopback
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _authenticate(self, assoc: Association) -> Principal:
        calling = str(assoc.requestor.ae_title).strip()
        address = str(assoc.requestor.address) if assoc.requestor.address else None
        sock = getattr(assoc.dul.socket, "socket", None)
        cert = None
        if isinstance(sock, ssl.SSLSocket):
            cert = sock.getpeercert(binary_form=True)
        try:
            return self.services.edges.dicom(calling, address, cert)
        except NotAuthenticated:
            client = self.settings.dicom_unknown_ae_client
            if client is None:
                raise
            return self.services.directory.client_principal(client, None, address)

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        try:
            principal = self._authenticate(assoc)
        except Exception as exc:
            reason = exc.message if isinstance(exc, SalusError) else "authentication failed"
            self.archive.record_refusal(None, "association", reason)
            assoc.abort()
            return
        setattr(assoc, _PRINCIPAL, principal)
        self.archive.audit.record(
            [
                self.archive._event(
                    principal,
                    "E",
                    f"dicom association {self.settings.dicom_ae_title}",
                    "association accepted",
                )
            ]
        )

    @staticmethod
    def _on_extended(event: Event) -> dict[str, bytes]:
        """SOP Class Extended Negotiation of the FIND models (PS3.4 C.5.1.1.2):
        relational queries (byte 1) and combined date-time matching (byte 2) are
        accepted when asked for; fuzzy semantic PN matching and time zone
        adjustment (bytes 3, 4) are not. Other SOP classes get no reply."""
        replies: dict[str, bytes] = {}
        combined: set[str] = set()
        for uid, info in dict(getattr(event, "app_info", {}) or {}).items():
            if str(uid) not in QR_FIND or not info:
                continue
            asked = bytes(info)
            reply = bytes([asked[0] & 1, (asked[1] & 1) if len(asked) > 1 else 0, 0, 0])
            replies[str(uid)] = reply[: max(len(asked), 1)]
            if len(asked) > 1 and asked[1] & 1:
                combined.add(str(uid))
        setattr(event.assoc, _COMBINED, combined)
        return replies

    def _on_rejected(self, event: Event) -> None:
        self.archive.record_refusal(None, "association", "calling AE title not recognized")

    @staticmethod
    def _principal(event: Event) -> Principal:
        principal = getattr(event.assoc, _PRINCIPAL, None)
        if principal is None:
            raise NotAuthenticated("The association is not authenticated.")
        return principal  # type: ignore[no-any-return]

    # -- services ----------------------------------------------------------------------
    def _on_echo(self, event: Event) -> int:
        """PS3.4 A.4: Verification."""
        try:
            self._principal(event)
        except SalusError as exc:
            return int(exc.dimse_status)
        return 0x0000

    def _on_store(self, event: Event) -> int:
        """PS3.4 B.2.3: store the data set as received; failure statuses per class."""
        try:
            principal = self._principal(event)
            request: Any = event.request
            raw = request.DataSet.getvalue() if request.DataSet is not None else b""
            data = part10_from_dimse(
                raw,
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
            )
            self.archive.store(principal, data)
        except SalusError as exc:
            if exc.http_status in (401, 403):
                self.archive.record_refusal(
                    getattr(event.assoc, _PRINCIPAL, None), "C-STORE", exc.message
                )
            else:
                self._store_failed(event, exc, int(exc.dimse_status))
            return int(exc.dimse_status)
        except Exception as exc:
            status = _status(exc, 0xC000)
            self._store_failed(event, exc, status)
            return status
        return 0x0000

    def _store_failed(self, event: Event, exc: BaseException, status: int) -> None:
        """Record a refused or failed C-STORE for the integration inbox (failures.py)."""
        request: Any = event.request
        record_store_failure(
            self.archive.audit,
            getattr(event.assoc, _PRINCIPAL, None),
            "C-STORE",
            exc,
            status=status,
            sop_class=str(getattr(request, "AffectedSOPClassUID", "") or "") or None,
            sop_instance=str(getattr(request, "AffectedSOPInstanceUID", "") or "") or None,
        )

    def _query(self, event: Event) -> tuple[Principal, Level, dict[str, QueryValue]]:
        principal = self._principal(event)
        level_text, keys = identifier_values(event.identifier)
        try:
            level = Level(level_text)
        except ValueError:
            from salus.errors import InvalidInput

            raise InvalidInput("QueryRetrieveLevel is missing or unknown.") from None
        return principal, level, keys

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """PS3.4 C.4.1: matches as Pending responses; C-CANCEL honoured between them."""
        try:
            principal, level, keys = self._query(event)
            context = getattr(event, "context", None)
            syntax = str(getattr(context, "abstract_syntax", ""))
            combined = syntax in getattr(event.assoc, _COMBINED, ())
            matches = self.archive.find(principal, level, keys, combined_datetime=combined)
        except Exception as exc:
            if isinstance(exc, SalusError) and exc.http_status in (401, 403):
                self.archive.record_refusal(
                    getattr(event.assoc, _PRINCIPAL, None), "C-FIND", exc.message
                )
            status = _status(exc, 0xC000)
            yield (0xA900 if status == 0x0122 else status), None
            return
        identifier = event.identifier
        requested = requested_keys(identifier)
        for match in matches:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            response: Dataset
            try:
                response = find_response(requested, level.value, match)
            except (ValueError, TypeError, KeyError):
                response = _response(identifier, level.value, match)
            yield _PENDING, response

    def _refs(self, event: Event, operation: str) -> list[InstanceRef]:
        principal, level, keys = self._query(event)
        try:
            return self.archive.instances(principal, level, keys)
        except SalusError as exc:
            if exc.http_status in (401, 403):
                self.archive.record_refusal(principal, operation, exc.message)
            raise

    def _send(
        self, event: Event, refs: list[InstanceRef], store_assoc: Callable[[], Association | None]
    ) -> Iterator[tuple[int, Dataset | None]]:
        """Pending responses, each with the instance to send by C-STORE on
        ``store_assoc()`` (the C-GET association or the C-MOVE sub-association)."""
        for ref in refs:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            try:
                outgoing = outgoing_instance(ref, self.archive.read(ref), store_assoc())
            except Exception as exc:
                log.warning("C-GET/C-MOVE cannot send a stored instance: %s", type(exc).__name__)
                yield _PENDING, _unsendable(ref)
                continue
            yield _PENDING, outgoing

    def _on_get(self, event: Event) -> Iterator[Any]:
        """PS3.4 C.4.3: C-STORE sub-operations on the same association. A refusal
        or bad identifier ends the C-GET with a failure status (0xC4xx)."""
        refs = self._refs(event, "C-GET")
        yield len(refs)
        yield from self._send(event, refs, lambda: event.assoc)

    def _on_move(self, event: Event) -> Iterator[Any]:
        """PS3.4 C.4.2: C-STORE sub-operations on a new association to a configured
        AE (unknown destination: 0xA801; refusal or bad identifier: 0xC5xx)."""
        destination = str(event.move_destination or "").strip()
        address = self.settings.dicom_move_destinations.get(destination)
        if address is None:
            yield None, None
            return
        host, _, port = address.rpartition(":")
        refs: list[InstanceRef] = []
        error: BaseException | None = None
        try:
            refs = self._refs(event, "C-MOVE")
        except Exception as exc:
            error = exc
        opened: list[Association] = []

        def on_open(sub: Event) -> None:  # the sub-association: TCP_NODELAY, remembered
            self._on_connect(sub)
            opened.append(sub.assoc)

        yield (
            host,
            int(port),
            {
                "contexts": _contexts_for(refs) or None,
                "evt_handlers": [(evt.EVT_CONN_OPEN, on_open)],
            },
        )
        if error is not None:
            raise error
        yield len(refs)
        yield from self._send(event, refs, lambda: opened[-1] if opened else None)


def _unsendable(ref: InstanceRef) -> Dataset:
    """A data set pynetdicom cannot send (no File Meta): its C-STORE sub-operation
    fails and the SOP Instance UID goes into FailedSOPInstanceUIDList (PS3.4 C.4.2.1.4)."""
    ds = Dataset()
    ds.SOPClassUID = UID(ref.sop_class_uid)
    ds.SOPInstanceUID = UID(ref.sop_instance_uid)
    return ds


def _contexts_for(refs: list[InstanceRef]) -> list[PresentationContext]:
    """Presentation contexts of a C-MOVE sub-association (at most 128, PS3.8
    9.3.2.2): one per SOP class and stored transfer syntax, offering only that
    syntax (so that a destination cannot pick one syntax for a class whose
    instances are stored in several), then one per SOP class with the native
    syntaxes, for the instances whose stored syntax the destination refuses."""
    pairs: list[tuple[str, str]] = []
    for ref in refs:
        pair = (ref.sop_class_uid, ref.transfer_syntax_uid)
        if pair not in pairs:
            pairs.append(pair)
    classes = list(dict.fromkeys(sop_class for sop_class, _ts in pairs))[:64]
    native = [build_context(sop_class, list(NATIVE)) for sop_class in classes]
    exact = [build_context(sop_class, [ts]) for sop_class, ts in pairs if sop_class in classes]
    return exact[: 128 - len(native)] + native


def accepted_syntaxes(assoc: Association | None) -> dict[str, list[str]]:
    """The transfer syntaxes accepted per SOP class for Salus as the Storage SCU."""
    accepted: dict[str, list[str]] = {}
    if assoc is None:
        return accepted
    for cx in assoc.accepted_contexts:
        if cx.as_scu and cx.transfer_syntax:
            accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return accepted


def outgoing_instance(
    ref: InstanceRef, part10: bytes | bytearray, assoc: Association | None
) -> RawInstance:
    """What to send for ``ref``: the stored bytes when the peer accepted the stored
    transfer syntax for its SOP class, otherwise the instance converted to a native
    syntax the peer accepted (:func:`salus.dicom.transcode.to_native`: compressed
    pixel data decoded, deflate inflated, big endian swapped; never re-compressed).
    :class:`~salus.dicom.transcode.NotConvertible` when neither is possible."""
    syntaxes = accepted_syntaxes(assoc)
    offered = syntaxes.get(ref.sop_class_uid)
    if assoc is None or offered is None or ref.transfer_syntax_uid in offered:
        return RawInstance(ref, part10)
    # pynetdicom converts between the two little endian native syntaxes itself.
    if ref.transfer_syntax_uid in NATIVE and any(ts in NATIVE for ts in offered):
        return RawInstance(ref, part10)
    target = next((ts for ts in NATIVE if ts in offered), None)
    if target is None:
        raise NotConvertible()
    converted = to_native(part10, ref.transfer_syntax_uid, target)
    log.info("C-STORE sub-operation converted (%s to %s)", ref.transfer_syntax_uid, target)
    return RawInstance(
        replace(ref, transfer_syntax_uid=target, dataset_offset=dataset_offset(converted)),
        converted,
    )


class _KnownAETitles(list[str]):
    """``AE.require_calling_aet`` read from the directory at each association, so
    edge identities added or disabled take effect without a restart."""

    def __init__(self, listener: DimseListener) -> None:
        super().__init__(["\x00"])  # never empty: an empty list would accept anyone
        self._listener = listener

    def __iter__(self) -> Iterator[str]:
        try:
            titles = self._listener.known_ae_titles()
        except Exception:
            log.error("could not read the known AE titles; rejecting the association")
            titles = []
        return iter(titles or ["\x00"])
