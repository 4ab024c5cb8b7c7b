"""HL7 feeds beyond one message: MSH-18 character sets, batches, the
authorization matrix on MLLP, replay after a mapping fix through the API,
and outbound sending through the job queue to a fake MLLP receiver."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from salus.hl7.mapping import SUPPORTED
from salus.hl7.mllp import END, frame
from salus.jobs import JobStatus, Worker
from salus.security.principal import AuthMethod
from tests.conftest import BACKENDS
from tests.integration.hl7_world import Hl7World, ack_code, adt, hl7_world, msg, msh, segments_of
from tests.integration.security_world import SYSTEM


@pytest.fixture(params=BACKENDS)
def w(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hl7World]:
    with hl7_world(
        request.param, tmp_path, jobs_backoff_base=0.01, jobs_backoff_max=0.02, jobs_max_attempts=3
    ) as world:
        yield world


def family_of(w: Hl7World, mrn: str) -> str:
    [patient] = w.search("a-feed", "Patient", identifier=f"urn:salus:org:hosp-a:mrn|{mrn}")
    return str(patient["name"][0]["family"])


CHARSETS = [
    ("8859/1", "latin_1", "Müller"),
    ("UNICODE UTF-8", "utf_8", "Nguyễn"),
    ("GB 18030-2000", "gb18030", "王小明"),
    ("KS X 1001", "euc_kr", "김민준"),
    ("BIG-5", "big5", "陳大文"),
    ("ASCII~ISO IR87", "iso2022_jp", "山田"),
    ("8859/5", "iso8859_5", "Иванов"),
]


def test_character_sets_of_msh18(w: Hl7World) -> None:
    c = w.client()
    for index, (charset, codec, family) in enumerate(CHARSETS):
        header = msh(f"CS{index}", "ADT^A28^ADT_A05", extra={18: charset}).encode("ascii")
        body = f"PID|1||CS{index}^^^HOSPA^MR||".encode() + family.encode(codec) + b"^X"
        reply = c.send(header + b"\r" + body + b"\r")
        assert ack_code(reply) == "AA", (charset, reply)
        assert segments_of(reply)["MSH"][17] == charset  # the ACK is in the same set
        assert family_of(w, f"CS{index}") == family
    # No MSH-18: UTF-8, else the hospital's fallback (ISO 8859-1).
    assert ack_code(c.send(adt("CS-u", "A28", mrn="U1"))) == "AA"
    latin = msh("CS-l", "ADT^A28").encode() + b"\rPID|1||L1^^^HOSPA^MR||Fran\xe7ois^X\r"
    assert ack_code(c.send(latin)) == "AA"
    assert family_of(w, "L1") == "François"
    # A declared set the bytes do not decode in: AR, ERR 102 at MSH-18.
    wrong = msh("CS-w", "ADT^A28", extra={18: "ASCII"}).encode() + b"\rPID|1||W1^^^HOSPA||\xe9\r"
    parts = segments_of(c.send(wrong))
    assert parts["MSA"][1] == "AR" and parts["ERR"][2] == "MSH^1^18"
    unknown = msh("CS-x", "ADT^A28", extra={18: "EBCDIC"}).encode() + b"\rPID|1||W2^^^HOSPA\r"
    parts = segments_of(c.send(unknown))
    assert parts["MSA"][1] == "AR" and parts["ERR"][3].startswith("103^")


def test_custom_encoding_characters_and_escapes(w: Hl7World) -> None:
    c = w.client()
    message = (
        b"MSH#$*!%#HIS#HOSPA#SALUS#SALUS#20240101120000##ADT$A28#ESC1#P#2.5\r"
        b"PID#1##E1$$$HOSPA$MR##O!T!Brien & Sons!F!X$Ann*Marie\r"
    )
    reply = c.send(message)
    assert ack_code(reply.replace(b"#", b"|")) == "AA"
    [patient] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|E1")
    # \T\ (subcomponent %) and \F\ (field #) un-escaped; repetition * splits names.
    assert patient["name"][0]["family"] == "O%Brien & Sons#X"
    assert patient["name"][0]["given"] == ["Ann"]


def test_batch_and_file_envelopes(w: Hl7World) -> None:
    c = w.client()
    batch = msg(
        "FHS|^~\\&|HIS|HOSPA",
        "BHS|^~\\&|HIS|HOSPA",
        *adt("B1", "A28", mrn="B1").decode().strip().split("\r"),
        *adt("B2", "A28", mrn="B2").decode().strip().split("\r"),
        "BTS|2",
        "FTS|1",
    )
    reply = c.send(batch).decode()
    assert reply.startswith("BHS|") and reply.rstrip("\r").endswith("BTS|2")
    assert reply.count("MSA|AA|") == 2 and "MSA|AA|B1" in reply and "MSA|AA|B2" in reply
    assert family_of(w, "B1") == family_of(w, "B2") == "Nguyễn"
    wrong = batch.replace(b"BTS|2", b"BTS|3").replace(b"|B1|", b"|B3|")
    parts = segments_of(c.send(wrong))
    assert parts["MSA"][1] == "AR" and parts["ERR"][2] == "BTS^1^1"


def test_a_hospital_feed_cannot_write_another_hospitals_records(w: Hl7World) -> None:
    c = w.client()
    assert ack_code(c.send(adt("X1", "A01", mrn="SHARED"))) == "AA"
    [a_patient] = w.search("a-feed", "Patient")
    # hosp-b's feed (by facility HOSPB) sends the same MRN and authority.
    b_message = adt("X2", "A08", mrn="SHARED").replace(b"|HOSPA|SALUS|", b"|HOSPB|SALUS|")
    b_message = b_message.replace("Nguyễn".encode(), b"Other")
    assert ack_code(c.send(b_message)) == "AA"
    [a_again] = w.search("a-feed", "Patient")
    assert a_again == a_patient  # untouched: same version, same name
    [b_patient] = w.search("b-feed", "Patient")
    assert b_patient["id"] != a_patient["id"] and b_patient["name"][0]["family"] == "Other"
    # A connection authenticated as hosp-b (its address registered for b-feed)
    # cannot send as hosp-a's facility: AR, nothing written.
    w.world.services.directory.add_edge_identity(
        SYSTEM, kind="mllp", client_id="b-feed", address="127.0.0.1/32"
    )
    w.runtime.forget_peers()
    c2 = w.client()
    parts = segments_of(c2.send(adt("X3", "A08", mrn="SHARED")))
    assert parts["MSA"][1] == "AR" and parts["ERR"][2] == "MSH^1^4"
    assert w.search("a-feed", "Patient") == [a_patient]
    # Unknown facility on an authenticated connection: the connection's hospital.
    other = adt("X4", "A28", mrn="B9").replace(b"|HOSPA|SALUS|", b"|LABX|SALUS|")
    assert ack_code(c2.send(other)) == "AA"
    assert len(w.search("b-feed", "Patient")) == 2 and len(w.search("a-feed", "Patient")) == 1


def test_replay_after_a_mapping_fix_through_the_api(
    w: Hl7World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_ctx: object) -> object:
        raise KeyError("a mapping bug")

    monkeypatch.setitem(SUPPORTED["ADT"], "A01", broken)
    c = w.client()
    parts = segments_of(c.send(adt("P1", "A01")))
    assert parts["MSA"][1] == "AE" and parts["ERR"][3].startswith("207^")
    monkeypatch.undo()  # the fix is deployed
    [row] = w.runtime.store.list()
    assert row["state"] == "failed" and w.search("a-feed", "Patient") == []
    uid = row["uid"]
    call = w.world.call
    assert call("a-doc", "GET", "/api/hl7/messages").status_code == 403
    assert call("b-feed", "GET", f"/api/hl7/messages/{uid}").status_code == 404
    assert call("b-feed", "GET", "/api/hl7/messages").json() == {"messages": []}
    shown = call("a-admin", "GET", f"/api/hl7/messages/{uid}").json()
    assert shown["state"] == "failed" and "message" not in shown  # no clinical data
    shown = call("a-feed", "GET", f"/api/hl7/messages/{uid}").json()
    assert shown["message"].startswith("MSH|^~\\&|HIS|HOSPA")
    assert [m["uid"] for m in call("ops-admin", "GET", "/api/hl7/messages").json()["messages"]] == [
        uid
    ]
    assert call("b-feed", "POST", f"/api/hl7/messages/{uid}/replay").status_code == 404
    replayed = call("a-feed", "POST", f"/api/hl7/messages/{uid}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["ack"] == "AA" and replayed.json()["state"] == "applied"
    assert family_of(w, "MRN1") == "Nguyễn" and len(w.search("a-feed", "Encounter")) == 1
    again = call("a-feed", "POST", f"/api/hl7/messages/{uid}/replay")
    assert again.status_code == 409  # applied messages are not applied twice
    # Each call was audited.
    events = call("ops-sec", "GET", "/api/v1/audit/events", params={"count": 500}).json()
    assert f"HL7Message/{uid}" in json.dumps(events)


def test_replay_of_a_rejected_message_keeps_the_sender_its_connection_proved(
    w: Hl7World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message imported for a client (or sent on a certificate-authenticated
    connection) from a facility no profile names is replayed as that client."""
    feed = w.world.services.directory.client_principal("a-feed", AuthMethod.CLIENT_SECRET, None)
    monkeypatch.delitem(SUPPORTED["ADT"], "A28")  # not supported yet: refused (AR)
    raw = adt("R1", "A28", mrn="R9").replace(b"|HOSPA|SALUS|", b"|LABX|SALUS|")
    received = w.runtime.service.receive(raw, source="file", connection=feed)
    assert received.ack.code == "AR"
    [row] = [r for r in w.runtime.store.list() if r["control_id"] == "R1"]
    assert row["state"] == "rejected" and row["client_id"] == "a-feed"
    monkeypatch.undo()  # the new message type is deployed
    ack = w.runtime.service.replay(int(row["id"]))
    assert ack.code == "AA"
    assert [p["identifier"][0]["value"] for p in w.search("a-feed", "Patient")] == ["R9"]


class FakeReceiver:
    """A receiving MLLP application on loopback answering the codes it is given."""

    def __init__(self, port: int, codes: list[str]) -> None:
        self.codes = codes
        self.received: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while END not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data[1 : data.find(END)])
                code = self.codes.pop(0) if self.codes else "AA"
                if code != "SILENT":
                    conn.sendall(frame(f"MSH|^~\\&|R|R|S|S|||ACK|1|P|2.5\rMSA|{code}|1\r".encode()))

    def close(self) -> None:
        self.server.close()


def test_outbound_through_the_job_queue_with_retries_and_dead_letter(w: Hl7World) -> None:
    services = w.world.services
    receiver = FakeReceiver(w.his_port, ["AE", "AR", "AA"])
    try:
        worker = Worker(services.jobs, services.job_handlers, poll_interval=0.01)
        text = b"MSH|^~\\&|SALUS|SALUS|RIS|HOSPA|20240101||ORU^R01|OUT1|P|2.5.1\rPID|1||X\r"
        job_id = w.runtime.send("his-a", text, org_id="hosp-a")
        assert text not in str(services.jobs.get(job_id).payload).encode()  # sealed
        for _ in range(50):
            worker.drain()
            if services.jobs.get(job_id).status == JobStatus.DONE:
                break
            time.sleep(0.02)
        job = services.jobs.get(job_id)
        assert job.status == JobStatus.DONE and job.attempts == 3
        assert receiver.received == [text.rstrip(b"\r") + b"\r"] * 3
        # Always refused: retried, then dead-lettered with a safe error.
        receiver.codes = ["AE"] * 5
        dead = w.runtime.send("his-a", text)
        for _ in range(50):
            worker.drain()
            if services.jobs.get(dead).status == JobStatus.DEAD:
                break
            time.sleep(0.02)
        job = services.jobs.get(dead)
        assert job.status == JobStatus.DEAD and "AE" in (job.last_error or "")
    finally:
        receiver.close()
