"""Unit tests of HL7 v2 parsing, character sets, ACKs and data types (no I/O)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from salus.errors import InvalidInput, NotSupported
from salus.hl7 import charsets
from salus.hl7.ack import Ack, escape, make_ack, wants_accept_ack
from salus.hl7.datatypes import dtm
from salus.hl7.errors import Location, hl7_code_of, location_of
from salus.hl7.parse import parse_message, split_batch_bytes, split_segments

MSG = b"MSH|^~\\&|HIS|HOSPA|SALUS|SALUS|20240101||ADT^A01^ADT_A01|C1|P|2.5\rPID|1||M1^^^HOSPA^MR\r"


def test_segment_ends_and_bom() -> None:
    assert split_segments("\ufeffMSH|a\r\nPID|b\nPV1|c\r\r") == ["MSH|a", "PID|b", "PV1|c"]
    message = parse_message(b"\xef\xbb\xbf" + MSG.replace(b"\r", b"\n"))
    assert message.header.control_id == "C1" and message.require("PID").get(3, 4) == "HOSPA"


def test_header_fields_and_versions() -> None:
    h = parse_message(MSG).header
    assert (h.message_code, h.trigger_event, h.structure, h.version) == (
        "ADT",
        "A01",
        "ADT_A01",
        "2.5",
    )
    assert not h.enhanced
    with pytest.raises(NotSupported) as exc:
        parse_message(MSG.replace(b"|2.5\r", b"|2.2\r"))
    assert hl7_code_of(exc.value) == "203" and str(location_of(exc.value)) == "MSH^1^12"
    with pytest.raises(InvalidInput) as bad:
        parse_message(MSG.replace(b"|C1|", b"||"))
    assert hl7_code_of(bad.value) == "101"
    with pytest.raises(InvalidInput):
        parse_message(b"PID|1\r")


def test_escapes_repetitions_and_components() -> None:
    raw = MSG + b"NTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\H\\h\\N\\\\X41\\~second\r"
    nte = parse_message(raw).require("NTE")
    reps = nte.reps(3)
    assert reps[0].c(1) == "a|b^c&d~e\\f\nghA"
    assert reps[1].c(1) == "second"


def test_charsets() -> None:
    assert charsets.decode("山田".encode("iso2022_jp"), ["ASCII", "ISO IR87"])[0] == "山田"
    assert charsets.decode("김".encode("euc_kr"), ["KS X 1001"])[0] == "김"
    assert charsets.decode(b"Fran\xe7ois", [])[0] == "François"  # fallback 8859/1
    with pytest.raises(InvalidInput) as exc:
        charsets.decode(b"\xe9", ["ASCII"])
    assert hl7_code_of(exc.value) == "102" and str(location_of(exc.value)) == "MSH^1^18"
    with pytest.raises(InvalidInput):
        charsets.codec_for("EBCDIC")
    assert charsets.msh18_of(b"MSH|^~\\&|a|b|c|d|e||f|g|P|2.5||||||UNICODE UTF-8~X\r") == [
        "UNICODE UTF-8",
        "X",
    ]


def test_batches() -> None:
    batch = split_batch_bytes(b"FHS|^~\\&\rBHS|^~\\&\r" + MSG + MSG + b"BTS|2\rFTS|1\r")
    assert batch.is_envelope and len(batch.raw_messages) == 2
    with pytest.raises(InvalidInput):
        split_batch_bytes(b"BHS|^~\\&\r" + MSG + b"BTS|3\r")


def test_ack_original_enhanced_and_old_versions() -> None:
    message = parse_message(MSG)
    ack = make_ack(message.header, {}, Ack("AE", "102", Location("PID", 1, 7), "bad | date"))
    segs = ack.split("\r")
    assert segs[1] == "MSA|AE|C1"
    assert segs[2] == "ERR||PID^1^7|102^Data type error^HL70357|E||||bad \\F\\ date"
    old = parse_message(MSG.replace(b"|2.5\r", b"|2.3\r"))
    segs = make_ack(old.header, {}, Ack("AR", "200", Location("MSH", 1, 9), "x")).split("\r")
    assert (
        segs[1] == "MSA|AR|C1|x" and segs[2] == "ERR|MSH^1^9^200&Unsupported message type&HL70357"
    )
    enhanced = parse_message(MSG.replace(b"|P|2.5", b"|P|2.5|||ER|NE")).header
    assert make_ack(enhanced, {}, Ack("AA"), accept=True).split("\r")[1] == "MSA|CA|C1"
    assert not wants_accept_ack(enhanced, Ack("AA")) and wants_accept_ack(enhanced, Ack("AE"))
    assert escape("a|b^c") == "a\\F\\b\\S\\c"


def test_dtm() -> None:
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    where = Location("PID", 1, 7)
    assert dtm("2024", tz, where) == "2024"
    assert dtm("20240131", tz, where) == "2024-01-31"
    assert dtm("202401311230", tz, where) == "2024-01-31T12:30:00+07:00"
    assert dtm("20240131123005.25-0500", tz, where) == "2024-01-31T12:30:05.250-05:00"
    for bad in ("20240230", "DOB", "2024013"):
        with pytest.raises(InvalidInput):
            dtm(bad, tz, where)
