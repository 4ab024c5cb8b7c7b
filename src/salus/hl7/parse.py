"""Parsing HL7 v2 messages (HL7 v2.8 chapter 2: 2.5 message construction rules,
2.7 escape sequences, 2.10.3 batches; versions 2.3 to 2.8).

Splitting into segments, fields, repetitions, components and subcomponents
is python-hl7's (``hl7.parse``), which reads the delimiters from MSH-1 and
MSH-2, so custom encoding characters work. Around it this module adds what a
receiver needs: decoding by MSH-18 (:mod:`salus.hl7.charsets`), segment ends
in CR, LF or CRLF and a leading byte-order mark, batch and file envelopes
(FHS/BHS/BTS/FTS), the header fields a receiver acts on (:class:`Header`),
our own un-escaping (2.7: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\Xhh\\`` in the
message's character set, ``\\.br\\`` as a line break; highlighting and
unknown escapes dropped) and typed access to a field's parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hl7

from salus.errors import InvalidInput, NotSupported
from salus.hl7 import charsets
from salus.hl7.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_VERSION,
    Location,
    hl7_error,
)

__all__ = [
    "Batch",
    "Header",
    "Message",
    "Rep",
    "Segment",
    "parse_message",
    "read_header",
    "loose_header",
    "split_batch",
    "split_batch_bytes",
    "split_segments",
]

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


def split_segments(text: str) -> list[str]:
    """Segments of a message or file: CR, LF or CRLF ends, BOM and blank lines dropped."""
    text = text.lstrip("\ufeff")
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return [line for line in (ln.strip("\x00 \t") for ln in lines) if line]


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields a receiver acts on (2.14.9)."""

    field_sep: str
    encoding_chars: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack: str
    application_ack: str
    charsets: tuple[str, ...]

    @property
    def message_type(self) -> str:
        return (
            f"{self.message_code}^{self.trigger_event}"
            if self.trigger_event
            else (self.message_code)
        )

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgment mode when MSH-15 or MSH-16 is valued (2.9.3)."""
        return bool(self.accept_ack or self.application_ack)


class Rep:
    """One repetition of a field: components of subcomponents, un-escaped on access."""

    __slots__ = ("_msg", "parts")

    def __init__(self, msg: Message, parts: list[list[str]]) -> None:
        self._msg = msg
        self.parts = parts

    def c(self, component: int = 1, sub: int = 1) -> str:
        """Component ``component``, subcomponent ``sub`` (1-based), un-escaped; '' if absent."""
        if component > len(self.parts):
            return ""
        subs = self.parts[component - 1]
        if sub > len(subs):
            return ""
        return self._msg.unescape(subs[sub - 1]).strip()

    def raw(self, component: int = 1) -> str:
        """A whole component with its subcomponent separators (escaped text)."""
        if component > len(self.parts):
            return ""
        return self._msg.header.encoding_chars[3:4].join(self.parts[component - 1])

    @property
    def empty(self) -> bool:
        return not any(s.strip() for comp in self.parts for s in comp)

    @property
    def text(self) -> str:
        """The first component (the usual 'value' of a simple field)."""
        return self.c(1)


def _as_parts(rep: Any) -> list[list[str]]:
    if isinstance(rep, str):
        return [[rep]]
    parts: list[list[str]] = []
    for comp in rep:
        if isinstance(comp, str):
            parts.append([comp])
        else:
            parts.append([str(s) for s in comp])
    return parts


class Segment:
    __slots__ = ("_msg", "_seg", "index", "name", "sequence")

    def __init__(self, msg: Message, seg: Any, index: int, sequence: int) -> None:
        self._msg = msg
        self._seg = seg
        self.index = index  # position in the message
        self.sequence = sequence  # occurrence of this segment name, 1-based
        self.name = str(seg[0])

    def reps(self, number: int) -> list[Rep]:
        """Every non-empty repetition of field ``number`` (HL7 numbering; MSH-2 is 2)."""
        if number >= len(self._seg):
            return []
        value = self._seg[number]
        if self.name == "MSH" and number <= 2:
            return [Rep(self._msg, [[str(value)]])]
        reps = [Rep(self._msg, _as_parts(r)) for r in value]
        return [r for r in reps if not r.empty]

    def rep(self, number: int) -> Rep:
        found = self.reps(number)
        return found[0] if found else Rep(self._msg, [])

    def get(self, number: int, component: int = 1, sub: int = 1) -> str:
        return self.rep(number).c(component, sub)

    def raw_field(self, number: int) -> str:
        return str(self._seg[number]) if number < len(self._seg) else ""

    def location(self, number: int | None = None, component: int | None = None) -> Location:
        return Location(self.name, self.sequence, number, component)

    def __str__(self) -> str:
        return str(self._seg)


class Message:
    """A decoded, split message with its header.

    The header is read from the MSH segment alone; python-hl7 parses the
    rest on first use of :attr:`segments` (an MLLP commit acknowledgment
    needs no more than the header, and a message that is only stored costs
    no full parse).
    """

    __slots__ = ("_msh", "_parsed", "_segments", "charset", "header", "text")

    def __init__(self, text: str, header: Header, charset: str, msh: Any) -> None:
        self.text = text
        self.header = header
        self.charset = charset
        self._msh = msh  # python-hl7's parse of the MSH segment
        self._parsed: Any = None
        self._segments: list[Segment] | None = None

    def __repr__(self) -> str:
        return f"Message({self.header.message_type!r}, {self.header.control_id!r})"

    @property
    def parsed(self) -> Any:
        """python-hl7's parse of the whole message."""
        if self._parsed is None:
            try:
                self._parsed = hl7.parse(self.text)
            except Exception:
                raise hl7_error(
                    InvalidInput("The message cannot be split into segments and fields."),
                    SEGMENT_SEQUENCE_ERROR,
                    Location("MSH"),
                ) from None
        return self._parsed

    @property
    def segments(self) -> list[Segment]:
        if self._segments is None:
            counts: dict[str, int] = {}
            segments = []
            for index, seg in enumerate(self.parsed):
                name = str(seg[0])
                counts[name] = counts.get(name, 0) + 1
                segments.append(Segment(self, seg, index, counts[name]))
            self._segments = segments
        return self._segments

    @property
    def msh(self) -> Segment:
        """The MSH segment (without parsing the rest)."""
        if self._segments is not None:
            return self._segments[0]
        return Segment(self, self._msh, 0, 1)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        if name == "MSH":
            return self.msh
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def require(self, name: str) -> Segment:
        seg = self.first(name)
        if seg is None:
            raise hl7_error(
                InvalidInput(f"The message has no {name} segment."),
                SEGMENT_SEQUENCE_ERROR,
                Location(name),
            )
        return seg

    def groups(self, start: str, within: tuple[str, ...] = ()) -> Iterator[list[Segment]]:
        """Runs of segments that begin at each ``start`` segment (a repeating group);
        a run ends at the next ``start`` or at a segment not in ``within`` (if given)."""
        current: list[Segment] | None = None
        for seg in self.segments:
            if seg.name == start:
                if current:
                    yield current
                current = [seg]
            elif current is not None:
                if within and seg.name not in within:
                    yield current
                    current = None
                else:
                    current.append(seg)
        if current:
            yield current

    def unescape(self, value: str) -> str:
        """HL7 v2.8 2.7: escape sequences of the message's delimiters."""
        esc = self.header.encoding_chars[2:3] or "\\"
        if esc not in value:
            return value
        sep = self.header.field_sep
        chars = (self.header.encoding_chars + "^~\\&")[:4]
        comp, rep, sub = chars[0], chars[1], chars[3]
        out: list[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            end = value.find(esc, i + 1) if ch == esc else -1
            if ch != esc or end < 0:
                out.append(ch)
                i += 1
                continue
            seq = value[i + 1 : end]
            i = end + 1
            simple = {"F": sep, "S": comp, "T": sub, "R": rep, "E": esc, ".br": "\n"}
            if seq in simple:
                out.append(simple[seq])
            elif seq.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", seq):
                data = bytes.fromhex(seq[1:])
                try:
                    out.append(charsets.decode(data, list(self.header.charsets))[0])
                except InvalidInput:
                    out.append(data.decode("latin_1"))
            # \H\ \N\ (highlighting), \Cxxyy\ \Mxxyyzz\ (set switches), \Z..\: dropped
        return "".join(out)


def _header(msh: Any, text_seg: str) -> Header:
    def f(number: int, component: int = 1) -> str:
        if number >= len(msh):
            return ""
        value = msh[number]
        parts = _as_parts(value[0]) if len(value) else [[""]]
        if component > len(parts):
            return ""
        return parts[component - 1][0].strip()

    encoding = str(msh[2]) if len(msh) > 2 else "^~\\&"
    charset_field = msh[18] if len(msh) > 18 else []
    names = tuple(str(r).strip() for r in charset_field if str(r).strip())
    return Header(
        field_sep=text_seg[3],
        encoding_chars=encoding,
        sending_application=f(3),
        sending_facility=f(4) or f(4, 2),
        receiving_application=f(5),
        receiving_facility=f(6),
        timestamp=f(7),
        message_code=f(9, 1),
        trigger_event=f(9, 2),
        structure=f(9, 3),
        control_id=f(10),
        processing_id=f(11),
        version=f(12),
        accept_ack=f(15),
        application_ack=f(16),
        charsets=names,
    )


def read_header(segments: list[str]) -> Any:
    """Check the segments' shape; returns python-hl7's parse of the MSH segment."""
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise hl7_error(
            InvalidInput("The message does not start with an MSH segment."),
            SEGMENT_SEQUENCE_ERROR,
            Location("MSH"),
        )
    first = segments[0]
    sep = first[3]
    if sep.isalnum() or sep in " \r\n":
        raise hl7_error(
            InvalidInput("MSH-1 is not a valid field separator."), "102", Location("MSH", 1, 1)
        )
    for seg in segments[1:]:
        if not _SEGMENT_NAME.match(seg[:3]) or (len(seg) > 3 and seg[3] != sep):
            raise hl7_error(
                InvalidInput("A segment does not start with a segment name."),
                SEGMENT_SEQUENCE_ERROR,
                Location(seg[:3] if _SEGMENT_NAME.match(seg[:3]) else "MSH"),
            )
    try:
        return hl7.parse(first).segment("MSH")
    except Exception:
        raise hl7_error(
            InvalidInput("The message cannot be split into segments and fields."),
            SEGMENT_SEQUENCE_ERROR,
            Location("MSH"),
        ) from None


def parse_message(raw: bytes, fallback_charset: str = "8859/1") -> Message:
    """Decode and parse one message (no batch envelope)."""
    text, used = charsets.decode(raw, charsets.msh18_of(raw), fallback_charset)
    return parse_text(text, used)


def parse_text(text: str, charset: str = "UNICODE UTF-8") -> Message:
    segments = split_segments(text)
    msh = read_header(segments)
    header = _header(msh, segments[0])
    message = Message("\r".join(segments), header, charset, msh)
    check_header(message)
    return message


def check_header(message: Message) -> None:
    """Required MSH fields (2.14.9): MSH-9, MSH-10, MSH-11, MSH-12 and a known version."""
    h = message.header
    for number, value in ((9, h.message_code), (10, h.control_id), (12, h.version)):
        if not value:
            raise hl7_error(
                InvalidInput(f"MSH-{number} is required."),
                REQUIRED_FIELD_MISSING,
                Location("MSH", 1, number),
            )
    if not any(h.version == v or h.version.startswith(v + ".") for v in SUPPORTED_VERSIONS):
        raise hl7_error(
            NotSupported("Salus accepts HL7 v2 versions 2.3 to 2.8."),
            UNSUPPORTED_VERSION,
            Location("MSH", 1, 12),
        )


@dataclass
class Batch:
    """A batch or file (2.10.3): the messages, and the envelope's header segments."""

    messages: list[str]
    envelope: list[str]
    declared_count: int | None = None
    raw_messages: list[bytes] = field(default_factory=list)

    @property
    def is_envelope(self) -> bool:
        return bool(self.envelope)


def split_batch(text: str) -> Batch:
    """Split FHS/BHS…BTS/FTS envelopes into messages; a lone message is a batch of one."""
    segments = split_segments(text)
    messages: list[list[str]] = []
    envelope: list[str] = []
    declared: int | None = None
    for seg in segments:
        name = seg[:3]
        if name in _ENVELOPE:
            envelope.append(seg)
            if name == "BTS":
                count = seg[4:].split(seg[3:4] or "|")[0] if len(seg) > 4 else ""
                if count.strip().isdigit():
                    declared = (declared or 0) + int(count)
            continue
        if name == "MSH" or not messages:
            messages.append([seg])
        else:
            messages[-1].append(seg)
    batch = Batch(["\r".join(m) for m in messages], envelope, declared)
    if batch.is_envelope and declared is not None and declared != len(batch.messages):
        raise hl7_error(
            InvalidInput("BTS-1 does not match the number of messages in the batch."),
            SEGMENT_SEQUENCE_ERROR,
            Location("BTS", 1, 1),
        )
    return batch


_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


def split_batch_bytes(raw: bytes) -> Batch:
    """:func:`split_batch` on raw bytes, so each message is decoded by its own MSH-18."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    segments = [s.strip(b"\x00 \t") for s in _SEGMENT_END.split(raw)]
    messages: list[list[bytes]] = []
    envelope: list[str] = []
    declared: int | None = None
    for seg in segments:
        if not seg:
            continue
        name = seg[:3].decode("latin_1")
        if name in _ENVELOPE:
            text = seg.decode("latin_1")
            envelope.append(text)
            if name == "BTS":
                count = text[4:].split(text[3:4] or "|")[0] if len(text) > 4 else ""
                if count.strip().isdigit():
                    declared = (declared or 0) + int(count)
            continue
        if name == "MSH" or not messages:
            messages.append([seg])
        else:
            messages[-1].append(seg)
    batch = Batch([b"\r".join(m).decode("latin_1") for m in messages], envelope, declared)
    batch.raw_messages = [b"\r".join(m) for m in messages]
    if batch.is_envelope and declared is not None and declared != len(batch.messages):
        raise hl7_error(
            InvalidInput("BTS-1 does not match the number of messages in the batch."),
            SEGMENT_SEQUENCE_ERROR,
            Location("BTS", 1, 1),
        )
    return batch


def loose_header(raw: bytes) -> tuple[Header | None, dict[int, str]]:
    """The MSH of a message that failed to parse, if it can be read at all (for the ACK)."""
    try:
        text = raw.decode("latin_1")
        first = split_segments(text)[0]
        msh = read_header([first])
        header = _header(msh, first)
        return header, {n: str(msh[n]) if n < len(msh) else "" for n in (3, 4, 5, 6)}
    except Exception:  # noqa: BLE001 - no usable header: the ACK uses defaults
        return None, {}
