"""Unit tests of DICOMweb media handling: Accept negotiation, the streaming
multipart/related reader (any chunking), transfer syntax choice, DICOM JSON values
and the window functions of rendering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from salus.dicom.render import Window, apply_window, parse_viewport, parse_window
from salus.dicom.web.dicomjson import element, to_xml
from salus.dicom.web.media import (
    MultipartReader,
    Part,
    closing,
    dicom_syntaxes,
    multipart_part,
    parse_accept,
)
from salus.dicom.web.qido import parse_query
from salus.dicom.web.retrieve import choose_syntax, frames_native
from salus.errors import InvalidInput, NotAcceptable

EXPLICIT, IMPLICIT, JPEG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"


def test_accept_order_and_parameters() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2;q=0.5, '
        'multipart/related; type="application/dicom", text/html;q=0'
    )
    assert [r.transfer_syntax for r in ranges] == [None, IMPLICIT]
    assert dicom_syntaxes(ranges) == [EXPLICIT, IMPLICIT]
    assert dicom_syntaxes(parse_accept(None)) == ["*"]
    assert dicom_syntaxes(parse_accept("multipart/related")) == ["*"]
    with pytest.raises(NotAcceptable):
        dicom_syntaxes(parse_accept("application/json"))


def test_choose_syntax() -> None:
    assert choose_syntax(JPEG, ["*"]) == JPEG
    assert choose_syntax(JPEG, [EXPLICIT, "*"]) == EXPLICIT  # the client's preference first
    assert choose_syntax(JPEG, [JPEG, EXPLICIT]) == JPEG
    assert choose_syntax(JPEG, ["1.2.840.10008.1.2.4.90"]) is None  # no re-compression
    assert choose_syntax(IMPLICIT, [EXPLICIT]) == EXPLICIT


def test_frames_negotiation() -> None:
    assert frames_native(parse_accept(None), JPEG) is False  # */*: as stored
    assert frames_native(parse_accept('multipart/related; type="image/jpeg"'), JPEG) is False
    octet = 'multipart/related; type="application/octet-stream"'
    assert frames_native(parse_accept(octet), JPEG) is True
    assert frames_native(parse_accept(octet + "; transfer-syntax=*"), JPEG) is True
    assert frames_native(parse_accept('multipart/related; type="*/*"'), JPEG) is False
    assert frames_native(parse_accept('multipart/related; type="*/*"'), EXPLICIT) is True
    assert frames_native(parse_accept(octet), EXPLICIT) is True
    with pytest.raises(NotAcceptable):
        frames_native(parse_accept('multipart/related; type="image/jp2"'), JPEG)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _read(data: bytes, size: int, boundary: str = "XyZ") -> list[Part]:
    async def run() -> list[Part]:
        reader = MultipartReader(boundary)
        return [part async for part in reader.parts(_chunks(data, size))]

    return asyncio.run(run())


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
def test_multipart_reader_any_chunking(size: int) -> None:
    bodies = [b"\x00\r\n--XyZ is not a delimiter\r\n", b"", bytes(range(256)) * 10]
    data = b"preamble\r\n" + b"".join(
        multipart_part("XyZ", "application/dicom", body) for body in bodies
    )
    data += closing("XyZ") + b"epilogue"
    parts = _read(data, size)
    assert [p.body for p in parts] == bodies
    assert all(p.content_type == "application/dicom" for p in parts)


def test_multipart_reader_rejects_bad_framing() -> None:
    good = multipart_part("XyZ", "application/dicom", b"abc") + closing("XyZ")
    with pytest.raises(InvalidInput):
        _read(good[:-12], 5)  # truncated before the closing delimiter
    with pytest.raises(InvalidInput):
        _read(b"no boundary at all", 4)
    assert _read(closing("XyZ"), 2) == []


def test_dicom_json_elements_and_xml() -> None:
    assert element("PatientName", "Yamada^Tarou=山田^太郎") == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}],
    }
    assert element("ModalitiesInStudy", "CT\\MR") == {"vr": "CS", "Value": ["CT", "MR"]}
    assert element("NumberOfStudyRelatedInstances", 4, "IS") == {"vr": "IS", "Value": [4]}
    assert element("StudyDate", None) == {"vr": "DA"}
    xml = to_xml({"00081197": element("FailureReason", 0xC000)}).decode()
    assert 'keyword="FailureReason"' in xml and '<Value number="1">49152</Value>' in xml


def test_qido_query_parsing() -> None:
    query = parse_query(
        [
            ("00100020", "P1"),
            ("StudyInstanceUID", "1.2,1.3"),
            ("includefield", "StudyDescription,00081030"),
            ("PatientName", "smi"),
            ("fuzzymatching", "true"),
            ("IssuerOfAccessionNumberSequence.LocalNamespaceEntityID", "X"),
        ]
    )
    assert query.identifier["PatientID"] == "P1"
    assert query.identifier["StudyInstanceUID"] == "1.2\\1.3"
    assert query.identifier["PatientName"] == "*smi*"
    assert query.identifier["IssuerOfAccessionNumberSequence"] == [{"LocalNamespaceEntityID": "X"}]
    assert query.include == {"StudyDescription"}
    with pytest.raises(InvalidInput):
        parse_query([("NotAKeyword", "x")])


def test_window_functions() -> None:
    x = np.array([-1000.0, 0.0, 39.5, 40.0, 239.5, 240.0, 1000.0])
    linear = apply_window(x, Window(40, 400))
    assert linear[0] == 0 and linear[-1] == 255
    assert 126 < linear[3] < 129  # the center is mid-grey
    exact = apply_window(x, Window(40, 400, "linear-exact"))
    assert exact[3] == pytest.approx(127.5)
    sigmoid = apply_window(x, Window(40, 400, "sigmoid"))
    assert sigmoid[3] == pytest.approx(127.5) and 0 < sigmoid[0] < 1
    assert parse_window("40,400,SIGMOID") == Window(40, 400, "sigmoid")
    for bad in ("40", "a,b", "40,0", "40,400,cubic"):
        with pytest.raises(InvalidInput):
            parse_window(bad)
    viewport = parse_viewport("100,50,0,0,10,-10")
    assert viewport is not None and viewport.region == (0, 0, 10, -10)
    with pytest.raises(InvalidInput):
        parse_viewport("0,10")
