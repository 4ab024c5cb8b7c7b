"""MSH-18 character sets (HL7 v2.8 chapter 2, 2.14.9.18 and table 0211).

The whole message is decoded before it is split into segments and fields:
in multi-byte sets (GB 18030, Big5) a delimiter byte can be the second half of
a character. ISO 2022 code extensions (a message whose MSH-18 lists ISO IR87,
ISO IR159, KS X 1001… as alternates after the default set) are decoded the way
pydicom decodes DICOM's Specific Character Set (pydicom ``charset.py``): the
bytes are split at escape sequences and each fragment is decoded with the
codec its escape sequence designates; Japanese fragments keep their escape and
go through Python's ``iso2022_jp`` codecs.

Leniency: a message that *declares* its character set must decode in it, or
it is refused (AE, ERR 102 at MSH-18): replacement characters in a patient's
name are worse than a visible error. A message without MSH-18 is read as
UTF-8 and, when that fails, in the per-hospital fallback set (ISO 8859-1 by
default), as senders that omit MSH-18 usually send one or the other.
"""

from __future__ import annotations

import codecs

from salus.errors import InvalidInput
from salus.hl7.errors import DATA_TYPE_ERROR, TABLE_VALUE_NOT_FOUND, Location, hl7_error

__all__ = ["CODECS", "codec_for", "decode", "encode", "msh18_of"]

#: HL7 table 0211 → Python codec.
CODECS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin_1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "ISO IR6": "ascii",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE": "utf_8",
    "UNICODE UTF-8": "utf_8",
    "UNICODE UTF-16": "utf_16",
    "UNICODE UTF-32": "utf_32",
}
#: ISO 2022 alternates: the sets that are reached by escape sequences.
ISO2022 = frozenset({"ISO IR14", "ISO IR87", "ISO IR159", "KS X 1001", "GB 18030-2000"})

_ESC = 0x1B
#: Escape sequences (ISO 2022) → (codec, keep the escape for the codec).
_ESCAPES: dict[bytes, tuple[str, bool]] = {
    b"\x1b(B": ("ascii", False),
    b"\x1b(J": ("iso2022_jp", True),
    b"\x1b)I": ("shift_jis", False),
    b"\x1b$B": ("iso2022_jp", True),
    b"\x1b$@": ("iso2022_jp", True),
    b"\x1b$(D": ("iso2022_jp_2", True),
    b"\x1b$)C": ("euc_kr", False),
    b"\x1b$)A": ("gb2312", False),
    b"\x1b-A": ("latin_1", False),
}

_MSH18 = Location("MSH", 1, 18)


def _normalize(name: str) -> str:
    return " ".join(name.strip().upper().replace("_", " ").split())


def codec_for(name: str) -> str:
    """The Python codec of an MSH-18 value; ERR 103 when it is not in table 0211."""
    codec = CODECS.get(_normalize(name))
    if codec is None:
        raise hl7_error(
            InvalidInput("MSH-18 names a character set Salus does not support."),
            TABLE_VALUE_NOT_FOUND,
            _MSH18,
        )
    return codec


def msh18_of(raw: bytes) -> list[str]:
    """MSH-18 read from the raw bytes (the header itself is ASCII)."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        return []
    sep = raw[start + 3 : start + 4]
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        found = raw.find(terminator, start)
        if found >= 0:
            end = min(end, found)
    fields = raw[start:end].split(sep)
    if len(fields) < 18:
        return []
    encoding = fields[1].decode("latin_1")
    rep = encoding[1] if len(encoding) > 1 else "~"
    value = fields[17].decode("latin_1")
    return [v.strip() for v in value.split(rep) if v.strip()]


def _decode_iso2022(raw: bytes, first: str) -> str:
    """Decode a message with ISO 2022 escape sequences (pydicom ``_decode_fragment``)."""
    out: list[str] = []
    pieces = raw.split(b"\x1b")
    out.append(pieces[0].decode(first))
    for piece in pieces[1:]:
        fragment = b"\x1b" + piece
        for escape, (codec, keep) in _ESCAPES.items():
            if fragment.startswith(escape):
                body = fragment if keep else fragment[len(escape) :]
                out.append(body.decode(codec))
                break
        else:
            raise UnicodeDecodeError(first, fragment, 0, 1, "unknown escape sequence")
    return "".join(out)


def decode(raw: bytes, declared: list[str], fallback: str = "8859/1") -> tuple[str, str]:
    """Decode a message; returns (text, the character set used)."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        if not declared:
            declared = ["UNICODE UTF-8"]
    if not declared:
        try:
            return raw.decode("utf_8"), "UNICODE UTF-8"
        except UnicodeDecodeError:
            return raw.decode(codec_for(fallback)), fallback
    first = codec_for(declared[0])
    alternates = [_normalize(d) for d in declared[1:]]
    for alternate in alternates:
        codec_for(alternate)
    try:
        if raw.find(bytes([_ESC])) >= 0 and (
            any(a in ISO2022 for a in alternates) or _normalize(declared[0]) in ISO2022
        ):
            return _decode_iso2022(raw, "ascii" if first.startswith("iso2022") else first), (
                "~".join(declared)
            )
        return raw.decode(first), "~".join(declared)
    except UnicodeDecodeError:
        raise hl7_error(
            InvalidInput("The message does not decode in the character set MSH-18 declares."),
            DATA_TYPE_ERROR,
            _MSH18,
        ) from None


def encode(text: str, charset: str | None) -> bytes:
    """Encode a reply in the character set of the message it answers."""
    names = [_normalize(n) for n in (charset or "").split("~") if n.strip()]
    if not names:
        return text.encode("utf_8")
    if any(n in ("ISO IR14", "ISO IR87", "ISO IR159") for n in names):
        return text.encode("iso2022_jp_2", errors="replace")
    return text.encode(codec_for(names[0]), errors="replace")
