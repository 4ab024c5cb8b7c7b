"""An HL7 test network: the security world (hosp-a, hosp-b…) with the MLLP
listener on a free loopback port and HL7 profiles for both hospitals, and a
small MLLP client that keeps its connection open."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salus.hl7.mllp import END, START, frame
from salus.hl7.runtime import Hl7Runtime
from tests.conftest import free_port
from tests.integration.security_world import World, make_world

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"

PROFILES = """
[org.hosp-a]
client = "a-feed"
facilities = ["HOSPA", "HOSPA_LAB"]
mrn_authorities = ["HOSPA"]
national_id_authorities = ["NATID"]
insurance_authorities = ["INS"]
timezone = "Asia/Ho_Chi_Minh"
z_segments = "extension"
ack_destination = "his-a"

[org.hosp-b]
client = "b-feed"
facilities = ["HOSPB"]
mrn_authorities = ["HOSPB"]

[destination.his-a]
host = "127.0.0.1"
port = {his_port}
ack_timeout = 2
"""


def msg(*segments: str) -> bytes:
    """A message from segments (CR ends)."""
    return ("\r".join(segments) + "\r").encode()


class MllpClient:
    """One sender connection: send a message, read its ACK."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes | None:
        """The next framed reply, or None if the server closed the connection."""
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        reply, self.buffer = self.buffer.split(END, 1)
        assert reply.startswith(START)
        return reply[1:]

    def send(self, message: bytes) -> bytes:
        self.send_raw(frame(message))
        reply = self.read_ack()
        assert reply is not None, "the server closed the connection"
        return reply

    def close(self) -> None:
        self.sock.close()


def segments_of(reply: bytes) -> dict[str, list[str]]:
    """Segment name → fields (split on '|'; MSH-1 is not counted) of a reply."""
    out: dict[str, list[str]] = {}
    for seg in reply.decode("utf-8", "replace").split("\r"):
        if seg:
            out.setdefault(seg[:3], seg.split("|"))
    return out


def ack_code(reply: bytes) -> str:
    return segments_of(reply)["MSA"][1]


@dataclass
class Hl7World:
    world: World
    port: int
    his_port: int
    clients: list[MllpClient] = field(default_factory=list)

    @property
    def runtime(self) -> Hl7Runtime:
        assert self.world.services.hl7 is not None
        return self.world.services.hl7

    def client(self) -> MllpClient:
        client = MllpClient(self.port)
        self.clients.append(client)
        return client

    def fhir(self, who: str, path: str, **params: Any) -> Any:
        response = self.world.call(who, "GET", f"/fhir/{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def search(self, who: str, res_type: str, **params: Any) -> list[dict[str, Any]]:
        bundle = self.fhir(who, res_type, **params)
        return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@contextmanager
def hl7_world(
    backend: str, folder: Path, *, extra_profiles: str = "", **overrides: Any
) -> Iterator[Hl7World]:
    """``extra_profiles``: TOML lines added to ``[org.hosp-a]``."""
    port, his_port = free_port(), free_port()
    profiles = folder / "hl7-profiles.toml"
    text = PROFILES.format(his_port=his_port)
    if extra_profiles:
        text = text.replace("[org.hosp-a]\n", f"[org.hosp-a]\n{extra_profiles}\n", 1)
    profiles.write_text(text)
    settings: dict[str, Any] = {
        "mllp_enabled": True,
        "mllp_port": port,
        "hl7_profiles_file": profiles,
        "mllp_max_message_bytes": 256 * 1024,
        "mllp_read_timeout": 1.0,
    }
    settings.update(overrides)
    with make_world(backend, folder, **settings) as world:
        hw = Hl7World(world, port, his_port)
        try:
            yield hw
        finally:
            for client in hw.clients:
                client.close()


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value} (HL7 numbering)."""
    top = max(fields)
    return "|".join([name] + [fields.get(i, "") for i in range(1, top + 1)])


def msh(control: str, mtype: str, *, facility: str = "HOSPA", version: str = "2.5.1",
        extra: dict[int, str] | None = None) -> str:  # fmt: skip
    fields = {3: "HIS", 4: facility, 5: "SALUS", 6: "SALUS", 7: "20240101120000",
              9: mtype, 10: control, 11: "P", 12: version}  # fmt: skip
    fields.update(extra or {})
    top = max(fields)
    return "MSH|^~\\&|" + "|".join(fields.get(i, "") for i in range(3, top + 1))


def adt(control: str, event: str, mrn: str = "MRN1", visit: str = "V100", **pv1: str) -> bytes:
    fields = {1: "1", 2: "I", 3: "W1^R2^B3^HOSPA", 7: "D1^House^Greg^^^Dr", 19: visit,
              44: "20240101110000"}  # fmt: skip
    fields.update({int(k[3:]): v for k, v in pv1.items()})
    return msg(
        msh(control, f"ADT^{event}^ADT_A01"),
        f"EVN|{event}|20240101120000",
        f"PID|1||{mrn}^^^HOSPA^MR~NID9^^^NATID^NI~INS7^^^INS^HC||Nguyễn^Văn^An^^Mr||19800101|M|||"
        "12 Lý Thường Kiệt^^Hà Nội^^10000^VN^H||^PRN^PH^^^^^^^^^0912345678|||M",
        seg("PV1", fields),
        "ZPI|custom|value",
    )
