"""Encoding the small data sets of a DIMSE exchange without pydicom's writer.

pynetdicom encodes every DIMSE Command Set (PS3.7 9.3, 6.3.1: Implicit VR
Little Endian, group 0000) and every C-FIND response Identifier (PS3.4
C.4.1.1.3.2) with pydicom's ``write_dataset``, which costs about as much per
element as reading one, and encodes each Command Set twice (once to measure
the Command Group Length). A C-FIND with 25 matches spent most of its time
there. This module encodes both directly (PS3.5 7.1.1-7.1.3 element framing,
6.2 padding: UI with NUL, other text with a space; 7.5 sequences with
explicit lengths) and falls back to pydicom for anything outside the simple
subset (other VRs, deflated syntaxes, values that do not encode), so the
bytes on the wire are valid DICOM either way.

:func:`install` puts the encoders in front of pynetdicom's ``encode`` where it
writes Command Sets (``pynetdicom.dimse_messages``) and response Identifiers
(``pynetdicom.service_class``), and reads PDUs in larger pieces than
pynetdicom's 4 KiB (:data:`RECV_CHUNK`); :class:`FindResponse` is the
Identifier a C-FIND handler yields (:func:`find_response` builds it from a
query match and the keys the request asked for).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

if TYPE_CHECKING:
    from salus.dicom.query import Match

__all__ = [
    "FindResponse",
    "encode_command",
    "encode_elements",
    "find_response",
    "find_response_pdata",
    "install",
    "requested_keys",
]

log = logging.getLogger("salus.dicom.dimse")

#: Text VRs (PS3.5 6.2) and the byte that pads them to an even length.
_TEXT = {
    vr: b" "
    for vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM")
    + ("UC", "UR", "UT")
}
_TEXT["UI"] = b"\x00"
#: Binary integer VRs: struct format character.
_INTS = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
#: Explicit VR: these have two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_ITEM, _GROUP_LENGTH_TAG = 0xFFFEE000, 0x00000000


class Unsupported(ValueError):
    """A value this encoder leaves to pydicom."""


#: One element to encode: (tag, VR, value); value ``None`` (empty), text, an int,
#: or for SQ a list of items, each a list of such elements.
Element = tuple[int, str, Any]


def _value_bytes(vr: str, value: Any, little: bool, encoding: str) -> bytes:
    if value is None or value == "":
        return b""
    pad = _TEXT.get(vr)
    if pad is not None:
        if isinstance(value, bytes | bytearray | float):  # pydicom decides how to write these
            raise Unsupported(vr)
        if isinstance(value, list | tuple):
            value = "\\".join(str(v) for v in value)
        raw = str(value).encode(encoding if vr not in ("UI", "AE", "CS", "DA", "TM") else "ascii")
        return raw + pad if len(raw) % 2 else raw
    if vr in ("OB", "UN") and isinstance(value, bytes | bytearray):
        return bytes(value) + b"\x00" if len(value) % 2 else bytes(value)
    fmt = _INTS.get(vr)
    if fmt is not None:
        values = value if isinstance(value, list | tuple) else [value]
        return struct.pack(("<" if little else ">") + fmt * len(values), *map(int, values))
    raise Unsupported(vr)


def encode_elements(
    elements: Sequence[Element], implicit: bool, little: bool, encoding: str = "utf-8"
) -> bytes:
    """Elements (in any order) as a data set in the given encoding (PS3.5 7.1)."""
    out = bytearray()
    order = "<" if little else ">"
    head_implicit = struct.Struct(order + "HHI")
    head_short = struct.Struct(order + "HH2sH")
    head_long = struct.Struct(order + "HH2s2xI")
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        if vr == "SQ":
            body = bytearray()
            for item in value or []:
                encoded = encode_elements(item, implicit, little, encoding)
                body += head_implicit.pack(_ITEM >> 16, _ITEM & 0xFFFF, len(encoded))
                body += encoded
            raw = bytes(body)
        else:
            raw = _value_bytes(vr, value, little, encoding)
        group, elem = tag >> 16, tag & 0xFFFF
        if implicit:
            out += head_implicit.pack(group, elem, len(raw))
        elif vr in _LONG:
            out += head_long.pack(group, elem, vr.encode("ascii"), len(raw))
        else:
            if len(raw) > 0xFFFF:
                raise Unsupported("value too long for a 16-bit length")
            out += head_short.pack(group, elem, vr.encode("ascii"), len(raw))
        out += raw
    return bytes(out)


def encode_command(ds: Dataset) -> bytes:
    """A Command Set (group 0000, Implicit VR Little Endian, PS3.7 6.3.1) whose
    elements pynetdicom built; :class:`Unsupported` for anything unusual."""
    elements: list[Element] = []
    for elem in ds._dict.values():  # noqa: SLF001 - the elements as set, no conversion
        if not isinstance(elem, DataElement) or elem.tag >> 16 != 0:
            raise Unsupported("not a plain command element")
        vr = str(elem.VR)
        if vr not in _TEXT and vr not in _INTS:
            raise Unsupported(vr)
        elements.append((int(elem.tag), vr, elem.value))
    return encode_elements(elements, True, True, "ascii")


class FindResponse(Dataset):
    """A C-FIND response Identifier kept as (tag, VR, value) elements and encoded by
    :func:`encode_elements` when pynetdicom sends it (``to_dataset`` builds the
    pydicom data set when the fast path does not apply)."""

    def __init__(self, elements: list[Element]) -> None:
        super().__init__()
        object.__setattr__(self, "_salus_elements", elements)

    def to_dataset(self) -> Dataset:
        ds = Dataset()
        for tag, vr, value in self._salus_elements:
            ds.add(_data_element(tag, vr, value))
        return ds


def _data_element(tag: int, vr: str, value: Any) -> DataElement:
    if vr == "SQ":
        items = []
        for item in value or []:
            sub = Dataset()
            for sub_tag, sub_vr, sub_value in item:
                sub.add(_data_element(sub_tag, sub_vr, sub_value))
            items.append(sub)
        return DataElement(tag, vr, DicomSequence(items))
    if isinstance(value, str) and "\\" in value:
        return DataElement(tag, vr, value.split("\\"))
    return DataElement(tag, vr, value)


def item_elements(item: dict[str, Any]) -> list[Element]:
    """A sequence item given by keyword (dictionary VRs)."""
    out: list[Element] = []
    for keyword, value in item.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        out.append((int(tag), str(dictionary_VR(tag)), value))
    return out


#: A requested key of a C-FIND identifier: (tag, VR as requested, keyword).
Requested = tuple[int, str, str]


def requested_keys(identifier: Dataset) -> list[Requested]:
    """The keys a C-FIND response carries (read once per request, not per match)."""
    keys = []
    for elem in identifier:
        keyword = elem.keyword
        if keyword and keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            keys.append((int(elem.tag), str(elem.VR), keyword))
    return keys


def find_response(keys: list[Requested], level: str, match: Match) -> FindResponse:
    """A C-FIND response identifier (PS3.4 C.4.1.1.3.2) as a :class:`FindResponse`:
    every requested key with its value or empty, the elements, VRs and values
    ``salus.dicom.dimse._response`` builds as a pydicom data set. ``ValueError``
    for a VR this encoder leaves to pydicom (the caller then builds that one)."""
    from salus.dicom.matching import KEYS  # matching imports parse, which imports this

    elements: list[Element] = [(0x00080005, "CS", "ISO_IR 192"), (0x00080052, "CS", level)]
    for tag, requested_vr, keyword in keys:
        value = match.attributes.get(keyword)
        if requested_vr == "SQ":
            items = value if isinstance(value, list) else []
            elements.append((tag, "SQ", [item_elements(item) for item in items]))
            continue
        if value is None:
            if requested_vr not in _SIMPLE_VRS:  # e.g. "US or SS": pydicom resolves it
                raise ValueError("a VR the fast encoder leaves to pydicom")
            elements.append((tag, requested_vr, None))
            continue
        vr = _dictionary_vr(tag)
        if keyword in KEYS and KEYS[keyword].vr in ("IS", "US"):
            elements.append((tag, vr, int(value)))
        else:
            elements.append((tag, vr, str(value)))
    return FindResponse(elements)


def _dictionary_vr(tag: int) -> str:
    vr = str(dictionary_VR(tag))
    if vr not in _SIMPLE_VRS:
        raise ValueError("a VR the fast encoder leaves to pydicom")
    return vr


_SIMPLE_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"} | {
    "UC", "UI", "UR", "UT", "US", "UL", "SS", "SL"
}  # fmt: skip


_installed = False


def install() -> None:
    """Put the fast encoders in front of pynetdicom's (once per process)."""
    global _installed
    if _installed:
        return
    from pynetdicom import dimse_messages, service_class

    command_encode: Any = getattr(dimse_messages, "encode")  # noqa: B009
    identifier_encode: Any = getattr(service_class, "encode")  # noqa: B009

    def encode_command_set(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if is_implicit_vr and is_little_endian and not deflated:
            try:
                return encode_command(ds)
            except (Unsupported, UnicodeError, struct.error, TypeError, ValueError):
                pass
        encoded: bytes | None = command_encode(ds, is_implicit_vr, is_little_endian, deflated)
        return encoded

    def encode_identifier(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if isinstance(ds, FindResponse):
            if not deflated:
                try:
                    return encode_elements(ds._salus_elements, is_implicit_vr, is_little_endian)
                except (Unsupported, UnicodeError, struct.error, TypeError, ValueError):
                    pass
            ds = ds.to_dataset()
        encoded: bytes | None = identifier_encode(ds, is_implicit_vr, is_little_endian, deflated)
        return encoded

    setattr(dimse_messages, "encode", encode_command_set)  # noqa: B010
    setattr(service_class, "encode", encode_identifier)  # noqa: B010
    _install_recv()
    _install_find_send()
    _installed = True


#: Statuses whose C-FIND-RSP carries no Offending Element nor Error Comment
#: (PS3.4 C.4.1.1.4: Pending, Pending with optional keys unsupported, Success).
_PLAIN_FIND_STATUSES = frozenset({0xFF00, 0xFF01, 0x0000})


def find_response_pdata(primitive: Any, context_id: int, max_pdu: int) -> Any:
    """A C-FIND-RSP (PS3.7 9.3.2.2) as ONE P-DATA primitive holding two PDVs, the
    Command Set and the Identifier (PS3.8 9.3.5: a P-DATA-TF PDU carries one or
    more PDVs; E.2: the last fragment of each), or ``None`` where pynetdicom's
    own path must send it (other statuses, an Error Comment or Offending Element,
    a peer whose maximum PDU is too small for both). The bytes of each PDV are
    those pynetdicom writes (unit tests compare them)."""
    from pynetdicom.pdu_primitives import P_DATA

    status = primitive.Status
    if (
        status not in _PLAIN_FIND_STATUSES
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or primitive.MessageIDBeingRespondedTo is None
    ):
        return None
    identifier = primitive.Identifier
    data = identifier.getvalue() if identifier is not None else b""
    elements: list[Element] = [
        (0x00000002, "UI", primitive.AffectedSOPClassUID),
        (0x00000100, "US", 0x8020),
        (0x00000120, "US", primitive.MessageIDBeingRespondedTo),
        (0x00000800, "US", 0x0001 if data else 0x0101),
        (0x00000900, "US", status),
    ]
    body = encode_elements(elements, True, True, "ascii")
    command = encode_elements([(_GROUP_LENGTH_TAG, "UL", len(body))], True, True) + body
    # PDV item: 4-byte length, context ID, message control header, fragment.
    if max_pdu and len(command) + len(data) + 12 > max_pdu:
        return None
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
    if data:
        pdata.presentation_data_value_list.append((context_id, b"\x02" + data))
    return pdata


def _install_find_send() -> None:
    """C-FIND responses sent as one P-DATA each, without building pynetdicom's
    DIMSE message object (its Command Set is a pydicom data set filled element by
    element, then encoded twice): about half of a pending response's cost on the
    server, and one PDU instead of two for the peer to read. Only while no
    ``EVT_DIMSE_SENT`` handler is bound (the message object is what it gets)."""
    from pynetdicom import evt
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_primitives import C_FIND

    send_msg: Any = DIMSEServiceProvider.send_msg

    def send(self: Any, primitive: Any, context_id: int) -> None:
        if type(primitive) is C_FIND and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            try:
                pdata = find_response_pdata(primitive, context_id, self.maximum_pdu_size)
            except (Unsupported, UnicodeError, struct.error, TypeError, ValueError):
                pdata = None
            if pdata is not None:
                self.dul.send_pdu(pdata)
                return
        send_msg(self, primitive, context_id)

    setattr(DIMSEServiceProvider, "send_msg", send)  # noqa: B010


#: Largest single read of a PDU's body (pynetdicom reads 4 KiB at a time: 130
#: system calls for a 512 x 512 CT image). Bounded, so that a PDU length field
#: (up to 4 GiB, from the peer) never sizes a buffer by itself.
RECV_CHUNK = 1 << 18


def _install_recv() -> None:
    from pynetdicom.transport import AssociationSocket

    def recv(self: Any, nr_bytes: int) -> bytearray:
        """``AssociationSocket.recv`` in larger reads; same contract (all the bytes,
        or what arrived before the peer closed the connection)."""
        sock = self.socket
        bytestream = bytearray()
        while len(bytestream) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(bytestream), RECV_CHUNK))
            if not chunk:
                break
            bytestream += chunk
        return bytestream

    setattr(AssociationSocket, "recv", recv)  # noqa: B010
