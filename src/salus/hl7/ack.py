"""Acknowledgments (HL7 v2.8 chapter 2: 2.9.2 original mode, 2.9.3 enhanced
mode, 2.14.8 MSA, 2.14.5 ERR; 2.10.3 batch acknowledgment).

Original mode answers AA, AE or AR; enhanced mode answers the accept
acknowledgment CA, CE or CR (sent or not as MSH-15 asks) and, when MSH-16
asks, an application acknowledgment AA/AE/AR. An error carries an ERR
segment: from v2.5 ERR-2 location, ERR-3 code (table 0357), ERR-4 severity
and ERR-8 a user message; before v2.5 ERR-1 (ELD: segment^sequence^field^code).
The text says what was wrong and where, never a value from the message.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from salus.hl7.errors import CODE_TEXT, Location
from salus.hl7.parse import Header

__all__ = ["Ack", "escape", "make_ack", "new_control_id", "wants_accept_ack"]

_COUNTER = itertools.count(1)
_PREFIX = os.urandom(3).hex().upper()
ORIGINAL_TO_ACCEPT = {"AA": "CA", "AE": "CE", "AR": "CR"}


def new_control_id() -> str:
    """A message control id unique to this process (MSH-10, at most 20 characters)."""
    return f"S{_PREFIX}{int(time.time()) % 10**8:08d}{next(_COUNTER) % 10**6:06d}"


def escape(text: str, header: Header | None = None) -> str:
    """HL7 v2.8 2.7.1: delimiters inside a value become escape sequences."""
    sep = header.field_sep if header else "|"
    chars = (header.encoding_chars if header else "^~\\&") + "^~\\&"
    comp, rep, esc, sub = chars[0], chars[1], chars[2], chars[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((sep, "F"), (comp, "S"), (sub, "T"), (rep, "R")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}.br{esc}")


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of one message, as it is acknowledged."""

    code: str  # AA, AE, AR (original mode)
    error_code: str | None = None  # table 0357
    location: Location | None = None
    text: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "AA"


def wants_accept_ack(header: Header | None, ack: Ack) -> bool:
    """MSH-15 (table 0155): AL always, NE never, ER on error, SU on success."""
    if header is None or not header.enhanced:
        return True
    condition = (header.accept_ack or "AL").upper()
    if condition == "NE":
        return False
    if condition == "ER":
        return not ack.ok
    if condition == "SU":
        return ack.ok
    return True


def _version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1] if len(parts) > 1 else 0)) >= minimum
    except ValueError:
        return True


def make_ack(
    header: Header | None,
    raw_header: dict[int, str] | None,
    ack: Ack,
    *,
    accept: bool = False,
    application: str = "SALUS",
    facility: str = "SALUS",
    timestamp: str | None = None,
) -> str:
    """The ACK message for ``header`` (None when the message had no usable MSH).

    ``raw_header`` holds MSH fields as received (escaped), so HD components
    survive unchanged; ``accept`` makes it a commit acknowledgment (CA/CE/CR).
    """
    raw = raw_header or {}
    sep = header.field_sep if header else "|"
    enc = header.encoding_chars if header else "^~\\&"
    comp = enc[0:1] or "^"
    sub = enc[3:4] or "&"
    version = header.version if header and header.version else "2.5"
    when = timestamp or time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "+0000"
    code = ORIGINAL_TO_ACCEPT[ack.code] if accept else ack.code
    trigger = header.trigger_event if header else ""
    msh = [
        "MSH",
        enc,
        raw.get(5) or application,
        raw.get(6) or facility,
        raw.get(3, ""),
        raw.get(4, ""),
        when,
        "",
        comp.join(p for p in ("ACK", trigger, "ACK") if p) if trigger else "ACK",
        new_control_id(),
        (header.processing_id if header and header.processing_id else "P"),
        version,
    ]
    if header and header.charsets:
        msh += ["", "", "", "", "", "~".join(header.charsets)]
    segments = [sep.join(msh)]
    control = escape(header.control_id, header) if header else ""
    modern = _version_at_least(version, (2, 5))
    text = escape(ack.text or "", header) if ack.text else ""
    msa = ["MSA", code, control]
    if not modern and text:
        msa.append(text)
    segments.append(sep.join(msa))
    if ack.error_code is not None:
        name = CODE_TEXT.get(ack.error_code, "Error")
        loc = ack.location or Location("MSH")
        if modern:
            err = [
                "ERR",
                "",
                str(loc).replace("^", comp),
                comp.join((ack.error_code, name, "HL70357")),
                "E",
                "",
                "",
                "",
                text,
            ]
        else:
            eld = [loc.segment, str(loc.sequence), str(loc.field or "")]
            eld.append(sub.join((ack.error_code, name, "HL70357")))
            err = ["ERR", comp.join(eld)]
        segments.append(sep.join(err))
    return "\r".join(segments) + "\r"


def batch_ack(acks: list[str], header_fields: list[str] | None = None) -> str:
    """A batch of acknowledgments (2.10.3.3): BHS, the ACKs, BTS with the count."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "+0000"
    bhs = "|".join(["BHS", "^~\\&", "SALUS", "SALUS", "", "", stamp])
    body = "".join(acks)
    return f"{bhs}\r{body}BTS|{len(acks)}\r"
