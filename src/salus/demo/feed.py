"""Feeding the rendered network into a running Salus through the interfaces a
hospital uses, one thread per interface:

* **HL7 v2 over MLLP** (HL7 v2.5.1 Appendix C, MLLP release 2): one connection per
  hospital, each message framed, sent, and its ACK read; anything but ``AA`` in
  MSA-1 stops the feed;
* **FHIR** (http.html#transaction): each patient's transaction Bundle, posted with
  a client-credentials token (RFC 6749 §4.4) of the hospital's ``-his`` client;
  every entry must answer 2xx;
* **DICOM C-STORE** (PS3.4 B.2, PS3.7 9.1.1) from the hospital's AE title
  (``pynetdicom``, TCP_NODELAY), every status 0x0000;
* **STOW-RS** (PS3.18 10.5) with a token of the hospital's ``-pacs`` client, 200;
* **CSV datasets** (``/api/v1/datasets/{name}/submissions``) by the hospital's
  data steward, signed in with a password (``/auth/login``), 201.

Each hospital's feeds run side by side (a thread per hospital and interface).
Order: a hospital's FHIR diagnoses and prescriptions wait for its HL7 ADT
messages (they point at the Patients and Encounters those create), and its
images wait for its patients, so that the ImagingStudy links to the full
Patient rather than creating one from the DICOM header.
"""

from __future__ import annotations

import functools
import io
import json
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from salus.demo.catalog import HospitalSpec
from salus.demo.model import Network
from salus.demo.render import DicomItem, Rendered
from salus.hl7.mllp import END, frame

__all__ = ["INTERFACES", "DemoFeedError", "Endpoints", "feed"]

INTERFACES = (
    "HL7 v2 / MLLP",
    "FHIR transactions",
    "DICOM C-STORE",
    "DICOMweb STOW-RS",
    "CSV datasets",
)
Progress = Callable[[str, int], None]


class DemoFeedError(Exception):
    """An item was refused; the message names the interface and the item, never its content."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    base_url: str
    host: str
    mllp_port: int
    dicom_port: int
    dicom_ae_title: str


@dataclass(slots=True)
class _State:
    endpoints: Endpoints
    secrets: dict[str, str]
    passwords: dict[str, str]
    #: Set when a hospital's patients are in Salus (HL7 ADT or FHIR Patients).
    patients_ready: dict[str, threading.Event]
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.stop.set()
        for event in self.patients_ready.values():
            event.set()


def _http(endpoints: Endpoints) -> httpx.Client:
    return httpx.Client(base_url=endpoints.base_url, timeout=60.0)


def _client_token(http: httpx.Client, client_id: str, secret: str) -> str:
    response = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    if response.status_code != 200:
        raise DemoFeedError(f"token for client {client_id}: HTTP {response.status_code}")
    return str(response.json()["access_token"])


def _user_token(http: httpx.Client, username: str, password: str) -> str:
    response = http.post("/auth/login", json={"username": username, "password": password})
    if response.status_code != 200:
        raise DemoFeedError(f"sign-in of {username}: HTTP {response.status_code}")
    return str(response.json()["access_token"])


def _msa_code(ack: bytes) -> str:
    for segment in ack.decode("utf-8", "replace").replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3] if len(segment) > 3 else "|")
            return fields[1] if len(fields) > 1 else ""
    return ""


def _send_hl7(state: _State, rendered: Rendered, org: str, advance: Progress) -> None:
    endpoints = state.endpoints
    with socket.create_connection((endpoints.host, endpoints.mllp_port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for msg_org, control, text in rendered.hl7:
            if msg_org != org or state.stop.is_set():
                continue
            sock.sendall(frame(text.encode("utf-8")))
            data = b""
            while END not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DemoFeedError(f"MLLP: {org} message {control}: connection closed")
                data += chunk
            code = _msa_code(data)
            if code != "AA":
                raise DemoFeedError(f"MLLP: {org} message {control} answered {code or '?'}")
            advance(INTERFACES[0], 1)


def _post_bundle(http: httpx.Client, token: str, org: str, mrn: str, data: bytes) -> None:
    response = http.post(
        "/fhir",
        content=data,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "Prefer": "return=minimal",
        },
    )
    if response.status_code != 200:
        detail = ""
        try:
            issues = response.json().get("issue", [])
            detail = "; ".join(str(i.get("diagnostics", "")) for i in issues)[:300]
        except ValueError:
            pass
        raise DemoFeedError(f"FHIR: {org} transaction: HTTP {response.status_code} {detail}")
    for entry in response.json().get("entry", []):
        status = str(entry.get("response", {}).get("status", ""))
        if not status.startswith("2"):
            raise DemoFeedError(f"FHIR: {org} transaction entry answered {status}")


def _send_fhir(state: _State, rendered: Rendered, spec: HospitalSpec, advance: Progress) -> None:
    if spec.his != "fhir":
        state.patients_ready[spec.org_id].wait()
    with _http(state.endpoints) as http:
        client = f"{spec.org_id}-his"
        token = _client_token(http, client, state.secrets[client])
        for org, mrn, data in rendered.fhir:
            if state.stop.is_set():
                return
            if org == spec.org_id:
                _post_bundle(http, token, org, mrn, data)
                advance(INTERFACES[1], 1)
    if spec.his == "fhir":
        state.patients_ready[spec.org_id].set()


def _c_store(state: _State, items: list[DicomItem], ae_title: str, advance: Progress) -> None:
    from pydicom import dcmread
    from pynetdicom import AE, evt

    from salus.demo.imaging import SOP_CLASSES

    def nodelay(event: Any) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title=ae_title)
    for sop_class in SOP_CLASSES.values():
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    endpoints = state.endpoints
    assoc = ae.associate(
        endpoints.host,
        endpoints.dicom_port,
        ae_title=endpoints.dicom_ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)],
    )
    if not assoc.is_established:
        raise DemoFeedError(f"C-STORE: association of {ae_title} was not accepted")
    try:
        for item in items:
            for uid, data in item.instances:
                if state.stop.is_set():
                    return
                status = assoc.send_c_store(dcmread(io.BytesIO(data)))
                code = getattr(status, "Status", None)
                if code != 0x0000:
                    raise DemoFeedError(f"C-STORE: instance {uid} answered status {code}")
                advance(INTERFACES[2], 1)
    finally:
        assoc.release()


def _stow(http: httpx.Client, token: str, item: DicomItem) -> None:
    boundary = f"salus-demo-{uuid.uuid4().hex}"
    parts = []
    for _uid, data in item.instances:
        parts.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    response = http.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    if response.status_code != 200:
        raise DemoFeedError(f"STOW-RS: study {item.study_uid}: HTTP {response.status_code}")


def _send_dicom(
    state: _State, rendered: Rendered, spec: HospitalSpec, route: str, advance: Progress
) -> None:
    items = [d for d in rendered.dicom if d.org_id == spec.org_id and d.route == route]
    if not items:
        return
    state.patients_ready[spec.org_id].wait()
    if state.stop.is_set():
        return
    if route == "c-store":
        _c_store(state, items, spec.ae_title, advance)
        return
    with _http(state.endpoints) as http:
        client = f"{spec.org_id}-pacs"
        token = _client_token(http, client, state.secrets[client])
        for item in items:
            if state.stop.is_set():
                return
            _stow(http, token, item)
            advance(INTERFACES[3], len(item.instances))


def _send_csv(state: _State, rendered: Rendered, network: Network, spec: HospitalSpec,
              advance: Progress) -> None:  # fmt: skip
    with _http(state.endpoints) as http:
        steward = f"{spec.org_id}.steward"
        token = _user_token(http, steward, state.passwords[steward])
        for org, name, data in rendered.csv:
            if org != spec.org_id or state.stop.is_set():
                continue
            response = http.post(
                f"/api/v1/datasets/{name}/submissions",
                params={"period": network.period},
                content=data,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
            )
            if response.status_code != 201:
                detail = json.dumps(response.json())[:300] if response.content else ""
                raise DemoFeedError(
                    f"CSV: {org} dataset {name}: HTTP {response.status_code} {detail}"
                )
            advance(INTERFACES[4], 1)


def totals(rendered: Rendered) -> dict[str, int]:
    """Items per interface (what the progress bars count)."""
    count = {name: 0 for name in INTERFACES}
    count[INTERFACES[0]] = len(rendered.hl7)
    count[INTERFACES[1]] = len(rendered.fhir)
    for item in rendered.dicom:
        key = INTERFACES[2] if item.route == "c-store" else INTERFACES[3]
        count[key] += len(item.instances)
    count[INTERFACES[4]] = len(rendered.csv)
    return count


def feed(
    network: Network,
    rendered: Rendered,
    endpoints: Endpoints,
    secrets: dict[str, str],
    advance: Progress,
) -> list[str]:
    """Send everything; return the errors (empty when every item was accepted)."""
    state = _State(
        endpoints,
        secrets,
        {x.name: x.password for x in network.logins if x.password},
        {spec.org_id: threading.Event() for spec in network.hospitals},
    )

    def hl7(spec: HospitalSpec) -> None:
        _send_hl7(state, rendered, spec.org_id, advance)
        state.patients_ready[spec.org_id].set()

    # One thread per hospital and interface, as each hospital's systems run on their own.
    jobs: list[tuple[str, Callable[[], None]]] = []
    for spec in network.hospitals:
        name = spec.org_id
        if spec.his == "hl7":
            jobs.append((f"hl7-{name}", functools.partial(hl7, spec)))
        jobs += [
            (f"fhir-{name}", functools.partial(_send_fhir, state, rendered, spec, advance)),
            (f"c-store-{name}",
             functools.partial(_send_dicom, state, rendered, spec, "c-store", advance)),
            (f"stow-rs-{name}",
             functools.partial(_send_dicom, state, rendered, spec, "stow-rs", advance)),
            (f"csv-{name}", functools.partial(_send_csv, state, rendered, network, spec, advance)),
        ]  # fmt: skip

    def run(name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except DemoFeedError as exc:
            state.fail(str(exc))
        except (OSError, httpx.HTTPError, RuntimeError, ValueError) as exc:
            state.fail(f"{name}: {type(exc).__name__}: {exc}"[:400])

    threads = [threading.Thread(target=run, args=job, name=f"demo-{job[0]}") for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return state.errors
