"""HL7 v2 over a real MLLP socket, on SQLite and PostgreSQL: ADT life cycle,
ORU/ORM/SIU/MDM/VXU field by field, duplicates, ACK codes with ERR, bad input
and framing, enhanced mode (HL7 v2.8 chapter 2, 2.9; chapters 3, 4, 7, 9, 10)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select

from salus.db.tables import fhir_resources, jobs
from salus.hl7.mllp import frame
from tests.conftest import BACKENDS
from tests.integration.hl7_world import (
    DATA,
    Hl7World,
    ack_code,
    adt,
    hl7_world,
    msg,
    msh,
    segments_of,
)


@pytest.fixture(params=BACKENDS)
def w(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    with hl7_world(request.param, tmp_path) as world:
        yield world


def count(w: Hl7World, res_type: str) -> int:
    with w.world.services.db.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(fhir_resources)
                .where(fhir_resources.c.res_type == res_type, fhir_resources.c.deleted.is_(False))
            ).scalar_one()
        )


def test_adt_life_cycle_patient_and_encounter_field_by_field(w: Hl7World) -> None:
    c = w.client()
    reply = c.send(adt("A1", "A01"))
    parts = segments_of(reply)
    assert parts["MSA"][1:3] == ["AA", "A1"]
    assert parts["MSH"][8] == "ACK^A01^ACK" and parts["MSH"][2:6] == [
        "SALUS",
        "SALUS",
        "HIS",
        "HOSPA",
    ]
    [patient] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|MRN1")
    assert patient["name"] == [{"family": "Nguyễn", "given": ["Văn", "An"], "prefix": ["Mr"]}]
    assert patient["gender"] == "male" and patient["birthDate"] == "1980-01-01"
    systems = {i["system"]: i["value"] for i in patient["identifier"]}
    assert systems == {
        "urn:salus:org:hosp-a:mrn": "MRN1",
        "urn:salus:national-id": "NID9",
        "urn:salus:org:hosp-a:insurance": "INS7",
    }
    assert patient["address"][0] == {
        "line": ["12 Lý Thường Kiệt"], "city": "Hà Nội", "postalCode": "10000",
        "country": "VN", "use": "home",
    }  # fmt: skip
    assert patient["telecom"] == [{"system": "phone", "value": "0912345678", "use": "home"}]
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["extension"] == [
        {"url": "urn:salus:hl7:z-segment", "valueString": "ZPI|custom|value"}
    ]
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert enc["status"] == "in-progress" and enc["class"]["code"] == "IMP"
    assert enc["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert enc["period"] == {"start": "2024-01-01T11:00:00+07:00"}
    assert enc["location"] == [{"location": {"display": "W1 R2 B3 HOSPA"}, "status": "active"}]
    assert enc["participant"][0]["individual"] == {"display": "Dr Greg House"}

    # A02 transfer: the new location is active, the old one completed.
    assert ack_code(c.send(adt("A2", "A02", PV13="W9^R1^B1", PV16="W1^R2^B3"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert [(loc["location"]["display"], loc["status"]) for loc in enc["location"]] == [
        ("W1 R2 B3 HOSPA", "completed"), ("W9 R1 B1", "active")]  # fmt: skip
    # A12 cancel transfer: back to the prior location.
    assert ack_code(c.send(adt("A2c", "A12", PV13="W9^R1^B1", PV16="W1^R2^B3"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert [loc["status"] for loc in enc["location"] if loc["status"] == "active"] == ["active"]
    assert [loc for loc in enc["location"] if loc["status"] == "active"][0]["location"] == {
        "display": "W1 R2 B3"}  # fmt: skip
    # A03 discharge, A13 cancel discharge, A11 cancel admit.
    assert ack_code(c.send(adt("A3", "A03", PV145="20240105093000"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert enc["status"] == "finished" and enc["period"]["end"] == "2024-01-05T09:30:00+07:00"
    assert ack_code(c.send(adt("A4", "A13"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert enc["status"] == "in-progress" and "end" not in enc["period"]
    assert ack_code(c.send(adt("A5", "A07"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert enc["class"]["code"] == "AMB"
    assert ack_code(c.send(adt("A6", "A11"))) == "AA"
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|V100")
    assert enc["status"] == "cancelled"
    assert count(w, "Patient") == 1 and count(w, "Encounter") == 1
    # A08 updates the patient; A28/A31 patient only.
    update = adt("A7", "A08").replace("Nguyễn^Văn^An".encode(), "Trần^Thị^Bình".encode())
    assert ack_code(c.send(update)) == "AA"
    [patient] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|MRN1")
    assert patient["name"][0]["family"] == "Trần" and patient["meta"]["versionId"] == "2"
    assert ack_code(c.send(adt("A8", "A28", mrn="MRN2"))) == "AA"
    assert count(w, "Patient") == 2 and count(w, "Encounter") == 1
    c.close()


def test_a40_merge_links_both_patients(w: Hl7World) -> None:
    c = w.client()
    assert ack_code(c.send(adt("M1", "A01", mrn="OLD1", visit="VOLD"))) == "AA"
    assert ack_code(c.send(adt("M2", "A28", mrn="NEW1"))) == "AA"
    merge = msg(
        msh("M3", "ADT^A40^ADT_A39"),
        "EVN|A40|20240101120000",
        "PID|1||NEW1^^^HOSPA^MR||Nguyễn^Văn^An",
        "MRG|OLD1^^^HOSPA^MR",
    )
    assert ack_code(c.send(merge)) == "AA"
    [old] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|OLD1")
    [new] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|NEW1")
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"}]
    assert new["link"] == [{"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}]
    # Documented choice (docs/hl7.md, ADR 10): the old record's Encounters etc. are not
    # moved; they stay on the old Patient, which points to the surviving one.
    [enc] = w.search("a-feed", "Encounter", identifier="urn:salus:org:hosp-a:visit|VOLD")
    assert enc["subject"] == {"reference": f"Patient/{old['id']}"}
    assert enc["meta"]["versionId"] == "1"
    c.close()


def test_duplicate_is_acknowledged_with_the_original_outcome_and_not_applied_twice(
    w: Hl7World,
) -> None:
    c = w.client()
    first = c.send(adt("D1", "A01"))
    again = c.send(adt("D1", "A01"))
    assert ack_code(first) == ack_code(again) == "AA"
    assert segments_of(again)["MSA"][2] == "D1"
    [patient] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|MRN1")
    assert patient["meta"]["versionId"] == "1"
    assert len(w.runtime.store.list()) == 1
    # A failed message's duplicate gets the same AE with the same ERR.
    bad = adt("D2", "A01", mrn="MRN5").replace(b"19800101", b"19801399")
    one, two = c.send(bad), c.send(bad)
    assert ack_code(one) == ack_code(two) == "AE"
    assert segments_of(one)["ERR"] == segments_of(two)["ERR"]
    c.close()


def test_application_error_ae_with_err_and_no_partial_write(w: Hl7World) -> None:
    c = w.client()
    oru = msg(
        msh("E1", "ORU^R01^ORU_R01"),
        "PID|1||MRN9^^^HOSPA^MR||Lê^Hoa||19900101|F",
        "OBR|1|P1|F1|2345-7^Glucose^LN|||20240101080000",
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|3.9-5.6|N|||F",
        "OBX|2|NM|2345-7^Glucose^LN||not-a-number|mmol/L|||||F",
    )
    reply = c.send(oru)
    parts = segments_of(reply)
    assert parts["MSA"][1:3] == ["AE", "E1"]
    assert parts["ERR"][2] == "OBX^2^5" and parts["ERR"][3] == "102^Data type error^HL70357"
    assert parts["ERR"][4] == "E" and "not-a-number" not in reply.decode()
    assert count(w, "Patient") == 0 and count(w, "Observation") == 0
    [row] = w.runtime.store.list()
    assert row["state"] == "failed" and row["error_code"] == "102"
    c.close()


def test_rejections_ar_unknown_type_version_garbage_and_sender(w: Hl7World) -> None:
    c = w.client()
    unsupported = (DATA / "BAR-P01-01.hl7").read_bytes().replace(b"\n", b"\r")
    unsupported = unsupported.replace(b"|GHHSFacility^", b"|HOSPA^")
    parts = segments_of(c.send(unsupported))
    assert parts["MSA"][1] == "AR" and parts["ERR"][3].startswith("200^")
    parts = segments_of(c.send(msg(msh("R2", "ADT^A99^ADT_A01"), "PID|1||X^^^HOSPA^MR")))
    assert parts["MSA"][1] == "AR" and parts["ERR"][3].startswith("201^")
    parts = segments_of(c.send(msg(msh("R3", "ADT^A01", version="2.1"), "PID|1||X")))
    # A pre-2.5 ACK carries the location and code in ERR-1 (ELD).
    assert (
        parts["MSA"][1] == "AR" and parts["ERR"][1] == "MSH^1^12^203&Unsupported version id&HL70357"
    )
    parts = segments_of(c.send(b"\x00\x01garbage without a header\r"))
    assert parts["MSA"][1] == "AR" and parts["ERR"][3].startswith("100^")
    parts = segments_of(c.send(msg(msh("R5", "ADT^A01", facility="NOWHERE"), "PID|1||X")))
    assert parts["MSA"][1:3] == ["AR", "R5"] and parts["ERR"][2] == "MSH^1^4"
    # Nothing received is dropped: all five are stored as rejected, no FHIR write.
    rows = w.runtime.store.list(limit=10)
    assert [r["state"] for r in rows] == ["rejected"] * 5
    assert count(w, "Patient") == 0
    # The listener survived all of it.
    assert ack_code(c.send(adt("R6", "A01"))) == "AA"
    c.close()


def test_framing_errors_close_the_connection_and_oversized_gets_ar(w: Hl7World) -> None:
    c = w.client()
    c.send_raw(b"not mllp at all\r\n")
    assert c.read_ack() is None
    c.close()
    c = w.client()
    big = msh("O1", "ADT^A01").encode() + b"\rNTE|1||" + b"x" * (300 * 1024) + b"\r"
    parts = segments_of(c.send(big))
    assert parts["MSA"][1:3] == ["AR", "O1"] and "maximum size" in parts["ERR"][8]
    assert ack_code(c.send(adt("O2", "A01"))) == "AA"  # the same connection goes on
    c.close()
    # A frame that never ends: the read timeout closes the connection.
    with socket.create_connection(("127.0.0.1", w.port), timeout=10) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|")
        assert sock.recv(100) == b""


def test_enhanced_mode_accept_ack_and_application_ack_job(w: Hl7World) -> None:
    c = w.client()
    enhanced = adt("N1", "A01").replace(b"|P|2.5.1", b"|P|2.5.1|||AL|AL")
    parts = segments_of(c.send(enhanced))
    assert parts["MSA"][1:3] == ["CA", "N1"]
    w.runtime.apply_pending()  # the background applier's work, run here
    [patient] = w.search("a-feed", "Patient", identifier="urn:salus:org:hosp-a:mrn|MRN1")
    assert patient["name"][0]["family"] == "Nguyễn"
    with w.world.services.db.read() as conn:
        kinds = [r.kind for r in conn.execute(select(jobs.c.kind, jobs.c.payload))]
    assert kinds == ["hl7.send"]  # the application ACK, to hosp-a's ack destination
    # MSH-15 NE: no accept acknowledgment at all; the next message is answered.
    c.send_raw(frame(adt("N2", "A08").replace(b"|P|2.5.1", b"|P|2.5.1|||NE|NE")))
    assert ack_code(c.send(adt("N3", "A08"))) == "AA"
    c.close()


def test_oru_observations_and_report_field_by_field(w: Hl7World) -> None:
    c = w.client()
    oru = msg(
        msh("O1", "ORU^R01^ORU_R01"),
        "PID|1||MRN1^^^HOSPA^MR||Lê^Hoa||19900101|F",
        "PV1|1|O|LAB||||||||||||||||V7",
        "OBR|1|P1|F1|24331-1^Lipid panel^LN|||20240101080000|||||||||||||||20240101093000|||F",
        "OBX|1|NM|2093-3^Cholesterol^LN||6.2|mmol/L^^UCUM|<5.2|H|||F|||20240101081500",
        "NTE|1||fasting",
        "OBX|2|SN|2571-8^Triglyceride^LN||<^0.5|mg/dl|||||F",
        "OBX|3|CWE|882-1^ABO+Rh group^LN||A+^A positive^L||||||F",
        "OBX|4|ST|8251-1^Comment^LN||line one~line two||||||P",
        "OBX|5|NM|2085-9^HDL^LN||1.1|mmol/L|1.0-1.6|N|||C",
        "OBX|6|SN|X^Ratio^L||^1^:^40||||||F",
    )
    assert ack_code(c.send(oru)) == "AA"
    [report] = w.search("a-feed", "DiagnosticReport")
    [patient] = w.search("a-feed", "Patient")
    assert report["status"] == "final" and report["code"]["coding"][0] == {
        "system": "http://loinc.org", "code": "24331-1", "display": "Lipid panel"}  # fmt: skip
    assert report["effectiveDateTime"] == "2024-01-01T08:00:00+07:00"
    assert report["issued"] == "2024-01-01T09:30:00+07:00"
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    obs = {o["code"]["coding"][0]["code"]: o for o in w.search("a-feed", "Observation")}
    assert len(report["result"]) == 6 == len(obs)
    chol = obs["2093-3"]
    assert chol["valueQuantity"] == {
        "value": 6.2,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }
    assert chol["referenceRange"][0]["high"]["value"] == 5.2
    assert chol["interpretation"][0]["coding"][0]["code"] == "H"
    assert chol["effectiveDateTime"] == "2024-01-01T08:15:00+07:00"
    assert chol["note"] == [{"text": "fasting"}]
    assert chol["encounter"]["reference"].startswith("Encounter/")
    trig = obs["2571-8"]["valueQuantity"]
    assert trig["comparator"] == "<" and trig["value"] == 0.5 and trig["code"] == "mg/dL"
    assert obs["882-1"]["valueCodeableConcept"]["coding"][0]["code"] == "A+"
    assert obs["8251-1"]["valueString"] == "line one\nline two"
    assert obs["8251-1"]["status"] == "preliminary"
    hdl = obs["2085-9"]
    assert hdl["status"] == "corrected"
    assert (
        hdl["referenceRange"][0]["low"]["value"],
        hdl["referenceRange"][0]["high"]["value"],
    ) == (1.0, 1.6)
    assert obs["X"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 40}}
    # The same results resent as a correction update, not duplicate.
    corrected = oru.replace(b"||6.2|", b"||6.3|").replace(b"|O1|", b"|O2|")
    assert ack_code(c.send(corrected)) == "AA"
    assert count(w, "Observation") == 6 and count(w, "DiagnosticReport") == 1
    c.close()


def test_orders_appointments_documents_immunizations(w: Hl7World) -> None:
    c = w.client()
    pid = "PID|1||MRN1^^^HOSPA^MR||Lê^Hoa||19900101|F"
    orm = msg(
        msh("Q1", "ORM^O01^ORM_O01"), pid,
        "ORC|NW|PL123|FL456||SC||||20240101101500|||D9^Who^Doctor",
        "OBR|1|PL123|FL456|71045^Chest X-ray^CPT4||||||||||||||||||||||||||S",
    )  # fmt: skip
    assert ack_code(c.send(orm)) == "AA"
    [order] = w.search("a-feed", "ServiceRequest")
    assert order["status"] == "active" and order["intent"] == "order"
    assert {i["value"] for i in order["identifier"]} == {"PL123", "FL456"}
    assert order["code"]["coding"][0]["code"] == "71045"
    assert order["authoredOn"] == "2024-01-01T10:15:00+07:00"
    assert order["requester"] == {"display": "Doctor Who"}
    cancel = (
        orm.replace(b"ORC|NW|", b"ORC|CA|").replace(b"|Q1|", b"|Q2|").replace(b"||SC||", b"||CA||")
    )
    assert ack_code(c.send(cancel)) == "AA"
    [order] = w.search("a-feed", "ServiceRequest")
    assert order["status"] == "revoked"

    siu = msg(
        msh("S1", "SIU^S12^SIU_S12"),
        "SCH|APT1|APT1F|||||CHECKUP^Check-up^L|ROUTINE^Routine^L|30|MIN|^^^20240110090000^20240110093000",
        pid, "AIP|1||D9^Who^Doctor", "AIL|1||CLINIC1^ROOM2",
    )  # fmt: skip
    assert ack_code(c.send(siu)) == "AA"
    [appt] = w.search("a-feed", "Appointment")
    assert appt["status"] == "booked" and appt["identifier"][0]["value"] == "APT1F"
    assert (appt["start"], appt["end"]) == (
        "2024-01-10T09:00:00+07:00",
        "2024-01-10T09:30:00+07:00",
    )
    assert appt["minutesDuration"] == 30
    actors = [p["actor"] for p in appt["participant"]]
    assert actors[0]["reference"].startswith("Patient/") and {"display": "Doctor Who"} in actors
    s15 = siu.replace(b"SIU^S12^SIU_S12", b"SIU^S15^SIU_S15").replace(b"|S1|", b"|S2|")
    assert ack_code(c.send(s15)) == "AA"
    [appt] = w.search("a-feed", "Appointment")
    assert appt["status"] == "cancelled"

    pdf = base64.b64encode(b"%PDF-1.4 fake").decode()
    mdm = msg(
        msh("T1", "MDM^T02^MDM_T02"), "EVN|T02|20240101120000", pid,
        "TXA|1|DS^Discharge summary^L|TX|20240102100000|||||D9^Who^Doctor|||DOC-77|||||AU",
        "OBX|1|TX|||Patient went home.", "OBX|2|TX|||Follow up in a week.",
        f"OBX|3|ED|||^application^pdf^Base64^{pdf}",
    )  # fmt: skip
    assert ack_code(c.send(mdm)) == "AA"
    [doc] = w.search("a-feed", "DocumentReference")
    assert doc["status"] == "current" and doc["docStatus"] == "final"
    assert doc["identifier"][0]["value"] == "DOC-77" and doc["date"] == "2024-01-02T10:00:00+07:00"
    text, attached = doc["content"]
    assert (
        base64.b64decode(text["attachment"]["data"]) == b"Patient went home.\nFollow up in a week."
    )
    assert attached["attachment"] == {"contentType": "application/pdf", "data": pdf}

    vxu = msg(
        msh("V1", "VXU^V04^VXU_V04"), pid,
        "ORC|RE||IMM-9",
        "RXA|0|1|20240103|20240103|08^HepB^CVX|0.5|mL^^UCUM||00||||||LOT42|20250101|MSD^Merck^MVX|||CP|A",
        "RXR|IM^Intramuscular^HL70162|LA^Left arm^HL70163",
    )  # fmt: skip
    assert ack_code(c.send(vxu)) == "AA"
    [imm] = w.search("a-feed", "Immunization")
    assert imm["status"] == "completed" and imm["occurrenceDateTime"] == "2024-01-03"
    assert imm["vaccineCode"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/cvx",
        "code": "08",
        "display": "HepB",
    }
    assert imm["doseQuantity"] == {
        "value": 0.5,
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert imm["lotNumber"] == "LOT42" and imm["expirationDate"] == "2025-01-01"
    assert imm["route"]["coding"][0]["code"] == "IM" and imm["primarySource"] is True
    assert imm["site"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0163"
    assert count(w, "Patient") == 1
    c.close()
