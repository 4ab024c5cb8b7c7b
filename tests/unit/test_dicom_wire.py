"""Unit tests of the fast DIMSE encoders (:mod:`salus.dicom.wire`): what they write
decodes with pydicom to the same elements as pydicom's own writer produces,
in every native transfer syntax, and Command Sets are byte for byte pydicom's."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import decode, encode

from salus.dicom.dimse import _response
from salus.dicom.matching import Level
from salus.dicom.query import Match
from salus.dicom.wire import (
    FindResponse,
    Unsupported,
    encode_command,
    encode_elements,
    find_response,
    install,
    requested_keys,
)

SYNTAXES = [(True, True), (False, True), (False, False)]  # implicit LE, explicit LE, explicit BE


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SpecificCharacterSet = ""
    for name in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "StudyDate",
        "StudyTime",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
        "SeriesNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, name, "")
    ds.RequestAttributesSequence = []
    ds.IssuerOfAccessionNumberSequence = []
    return ds


def _match(**overrides: Any) -> Match:
    attributes: dict[str, Any] = {
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.12",
        "StudyDate": "20200101",
        "StudyTime": "101500.25",
        "PatientName": "Nguyễn^Văn=グエン^ヴァン",
        "PatientID": "P0000001",
        "AccessionNumber": None,
        "StudyDescription": "CT CHEST",
        "ModalitiesInStudy": "CT\\SR",
        "NumberOfStudyRelatedInstances": 12,
        "NumberOfSeriesRelatedInstances": 3,
        "SeriesNumber": 4,
        "ReferringPhysicianName": "Tran^Minh",
        "RequestAttributesSequence": [
            {"RequestedProcedureID": "RP1", "ScheduledProcedureStepID": "SPS7"},
            {"RequestedProcedureID": "RP2"},
        ],
        "IssuerOfAccessionNumberSequence": [],
    }
    attributes.update(overrides)
    return Match(Level.SERIES, attributes, None, None, None, None, "hosp-a")


def _decoded(data: bytes, implicit: bool, little: bool) -> list[tuple[int, str]]:
    ds = decode(BytesIO(data), implicit, little)
    out = []
    for elem in ds.iterall():
        value = "" if elem.VR == "SQ" else str(elem.value)
        out.append((int(elem.tag), value))
    return out


@pytest.mark.parametrize(("implicit", "little"), SYNTAXES)
@pytest.mark.parametrize("overrides", [{}, {"PatientName": None, "SeriesNumber": None}])
def test_find_response_decodes_like_pydicoms(
    implicit: bool, little: bool, overrides: dict[str, Any]
) -> None:
    identifier = _identifier()
    match = _match(**overrides)
    fast = find_response(requested_keys(identifier), "SERIES", match)
    assert isinstance(fast, FindResponse)
    ours = encode_elements(fast._salus_elements, implicit, little)
    theirs = encode(_response(identifier, "SERIES", match), implicit, little)
    assert theirs is not None
    assert len(ours) % 2 == 0
    assert _decoded(ours, implicit, little) == _decoded(theirs, implicit, little)
    # The fallback data set is pydicom's response too.
    fallback = encode(fast.to_dataset(), implicit, little)
    assert fallback is not None
    assert _decoded(fallback, implicit, little) == _decoded(theirs, implicit, little)


def test_without_sequences_the_bytes_are_pydicoms() -> None:
    identifier = _identifier()
    del identifier.RequestAttributesSequence
    del identifier.IssuerOfAccessionNumberSequence
    match = _match()
    fast = find_response(requested_keys(identifier), "SERIES", match)
    for implicit, little in SYNTAXES:
        ours = encode_elements(fast._salus_elements, implicit, little)
        assert ours == encode(_response(identifier, "SERIES", match), implicit, little)


def test_values_it_cannot_encode_go_to_pydicom() -> None:
    with pytest.raises(Unsupported):
        encode_elements([(0x00280010, "OW", b"\x01\x02")], True, True)
    with pytest.raises(UnicodeError):  # a UI is ASCII
        encode_elements([(0x0020000D, "UI", "1.2.é")], True, True)
    with pytest.raises(Unsupported):  # bytes in a text VR: pydicom's business
        encode_elements([(0x00001031, "AE", b"MOVER")], True, True)
    with pytest.raises(Unsupported):  # too long for a 16-bit length
        encode_elements([(0x00081030, "LO", "x" * 70000)], False, True)


@pytest.mark.parametrize("primitive", ["find", "store"])
def test_command_sets_are_byte_for_byte_pydicoms(primitive: str) -> None:
    from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RSP

    if primitive == "find":
        rsp: Any = C_FIND()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
        rsp.Status = 0xFF00
        rsp.Identifier = BytesIO(b"\x08\x00\x05\x00\x00\x00\x00\x00")
        message: Any = C_FIND_RSP()
    else:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 3
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
        rsp.Status = 0x0000
        message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_command(message.command_set) == encode(message.command_set, True, True)


def test_install_is_idempotent_and_keeps_other_data_sets_on_pydicom() -> None:
    from pynetdicom import dimse_messages, service_class

    install()
    first = dimse_messages.encode  # type: ignore[attr-defined]
    install()
    assert dimse_messages.encode is first  # type: ignore[attr-defined]
    plain = Dataset()
    plain.PatientID = "P1"
    assert service_class.encode(plain, True, True) == encode(plain, True, True)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sop_instance", "syntax"),
    [
        ("1.2.826.0.1.3680043.8.498.123456789.1", "1.2.840.10008.1.2"),
        ("1.2.826.0.1.3680043.8.498.12345678.1", "1.2.840.10008.1.2.1"),
        ("1.2.3", "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_meta_of_a_received_data_set_is_pydicoms(sop_instance: str, syntax: str) -> None:
    from salus.dicom.parse import _part10_from_dimse_pydicom, dataset_offset, part10_from_dimse

    dataset = b"\x08\x00\x16\x00UI\x04\x001.2\x00"
    args = (dataset, "1.2.840.10008.5.1.4.1.1.2", sop_instance, syntax)
    ours = part10_from_dimse(*args)
    assert ours == _part10_from_dimse_pydicom(*args)
    assert ours[dataset_offset(ours) :] == dataset


def _pynetdicom_pdvs(rsp: C_FIND, max_pdu: int) -> list[tuple[int, bytes]]:
    """The PDVs pynetdicom's own path writes for a response (pydicom's encoder)."""
    from unittest import mock

    from pynetdicom import dimse_messages
    from pynetdicom.dimse_messages import C_FIND_RSP

    message = C_FIND_RSP()
    with mock.patch.object(dimse_messages, "encode", encode):
        message.primitive_to_message(rsp)
        return [
            pdv for p in message.encode_msg(1, max_pdu) for pdv in p.presentation_data_value_list
        ]


@pytest.mark.parametrize(
    ("status", "identifier"),
    [
        (0xFF00, b"\x08\x00\x20\x00\x08\x00\x00\x0020200101"),
        (0xFF01, b"\x10\x00\x20\x00\x02\x00\x00\x00P1"),
        (0x0000, None),
    ],
)
def test_find_response_is_one_pdu_with_pynetdicoms_pdvs(
    status: int, identifier: bytes | None
) -> None:
    from salus.dicom.wire import find_response_pdata

    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier) if identifier is not None else None
    pdata = find_response_pdata(rsp, 1, 16384)
    assert pdata is not None
    assert pdata.presentation_data_value_list == _pynetdicom_pdvs(rsp, 16384)
    assert len(pdata.presentation_data_value_list) == (2 if identifier else 1)


def test_find_responses_outside_the_plain_case_go_to_pynetdicom() -> None:
    from salus.dicom.wire import find_response_pdata

    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = 0xA700
    assert find_response_pdata(rsp, 1, 16384) is None  # a failure status
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(b"\x10\x00\x20\x00\x02\x00\x00\x00P1" * 100)
    assert find_response_pdata(rsp, 1, 256) is None  # does not fit the peer's PDU
    assert find_response_pdata(rsp, 1, 0) is not None  # 0: no limit
    rsp.Status = 0x0000
    rsp.Identifier = None
    rsp.ErrorComment = "x"
    assert find_response_pdata(rsp, 1, 16384) is None
