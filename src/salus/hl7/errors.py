"""HL7 v2 error codes and locations (HL7 v2.8 chapter 2, 2.14.5 ERR; table 0357).

Salus raises its own error tree everywhere (:mod:`salus.errors`); at the HL7
edge each error also needs the HL7 error code of table 0357 and where in the
message the problem is (ERR-2, an ERL: segment^sequence^field^repetition^
component). :func:`hl7_error` attaches both to any :class:`SalusError`
without subclassing (the error tree stays the one the contract tests know),
and :func:`hl7_code_of` / :func:`location_of` read them back, with defaults
drawn from the class.

Messages are patient-data free, as everywhere in Salus: they name segments
and fields, never values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from salus.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    NotSupported,
    SalusError,
    Unavailable,
)

__all__ = [
    "APPLICATION_ERROR",
    "DATA_TYPE_ERROR",
    "REQUIRED_FIELD_MISSING",
    "SEGMENT_SEQUENCE_ERROR",
    "TABLE_VALUE_NOT_FOUND",
    "UNSUPPORTED_EVENT",
    "UNSUPPORTED_MESSAGE_TYPE",
    "UNSUPPORTED_PROCESSING_ID",
    "UNSUPPORTED_VERSION",
    "Location",
    "hl7_code_of",
    "hl7_error",
    "location_of",
]

# HL7 table 0357, message error condition codes.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION = "203"
APPLICATION_ERROR = "207"

CODE_TEXT = {
    "0": "Message accepted",
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION: "Unsupported version id",
    "206": "Application record locked",
    APPLICATION_ERROR: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class Location:
    """ERR-2 (ERL): a segment, its occurrence, and optionally a field and component."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        parts = [self.segment, str(self.sequence)]
        if self.field is not None:
            parts.append(str(self.field))
            if self.component is not None:
                parts += ["1", str(self.component)]
        return "^".join(parts)

    @classmethod
    def parse(cls, text: str | None) -> Location | None:
        if not text:
            return None
        parts = text.split("^")
        try:
            return cls(
                parts[0],
                int(parts[1]) if len(parts) > 1 else 1,
                int(parts[2]) if len(parts) > 2 else None,
                int(parts[4]) if len(parts) > 4 else None,
            )
        except ValueError:
            return None


E = TypeVar("E", bound=SalusError)


def hl7_error(exc: E, code: str, location: Location | None = None) -> E:
    """Attach an HL7 error code (table 0357) and location to a Salus error."""
    exc.hl7_code = code  # type: ignore[attr-defined]
    exc.hl7_location = location  # type: ignore[attr-defined]
    return exc


def hl7_code_of(exc: SalusError) -> str:
    code = getattr(exc, "hl7_code", None)
    if isinstance(code, str):
        return code
    if isinstance(exc, NotSupported):
        return UNSUPPORTED_MESSAGE_TYPE
    if isinstance(exc, InvalidInput):
        return DATA_TYPE_ERROR
    if isinstance(exc, Conflict):
        return "206"
    if isinstance(exc, NotAuthenticated | Forbidden | Unavailable):
        return APPLICATION_ERROR
    return APPLICATION_ERROR


def location_of(exc: SalusError) -> Location | None:
    location = getattr(exc, "hl7_location", None)
    return location if isinstance(location, Location) else None
