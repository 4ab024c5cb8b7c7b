"""Search index values and the conversions of FHIR data to them.

One frozen dataclass per index table (FHIR R4 ``search.html`` §3.1.1: number,
date, string, token, reference, quantity, uri, composite). Every value carries
``param``, the code of the search parameter it was extracted for.

Conventions (documented here once, relied on by the query side):

* **date** (``search.html`` §3.1.1.4 "date"): every value is an *interval*
  ``[low, high]`` (both inclusive, aware UTC datetimes, microsecond
  resolution) covering the precision of the stored value: ``2020`` is
  2020-01-01T00:00:00 to 2020-12-31T23:59:59.999999, ``2020-02`` the whole of
  February, a dateTime with seconds the whole second. Values with a time zone
  are converted to UTC. **Values without a time zone (dates, and dateTimes
  that lack one) are taken as UTC**; the server's own time zone is not used.
  A Period's missing start or end is :data:`DATE_MIN` / :data:`DATE_MAX`; a
  Timing gives one interval covering its events and ``repeat.boundsPeriod``
  ("only the outer limits matter").
* **number** and **quantity** (``search.html`` §3.1.1.1 "number", §3.1.1.5
  "quantity"): ``[low, high)`` is the implicit precision range of the decimal
  as written: ``100`` is [99.5, 100.5), ``100.0`` is [99.95, 100.05),
  ``1e2`` is [50, 150). ``value`` keeps the number as written. Pass JSON parsed
  with ``parse_float=Decimal`` to keep the written precision; a Python float
  is read through ``repr`` (``100.0`` keeps one decimal place, ``100`` parsed
  as int has none). A Range gives its low/high values as written; a missing
  end, or a Quantity with a ``<``/``>`` comparator, is open: :data:`NUMBER_MIN`
  / :data:`NUMBER_MAX` (which fit the index tables' NUMERIC(38, 12)).
* **string** (``search.html`` §3.1.1.6): ``normalized`` is lower-cased
  (casefold) with accents and other combining marks removed (NFKD), a few
  letters that have no decomposition mapped (Vietnamese/Croatian ``đ`` → ``d``,
  ``ø`` → ``o``, ``ł`` → ``l`` ...), then recomposed with NFKC so that Hangul,
  CJK and kana stay as they are (full width). ``exact`` is the value as given.
* **token** (``search.html`` §3.1.1.3): ``system``/``code``; ``text`` is the
  Coding display, the CodeableConcept text (a row of its own, without code)
  or the Identifier type text (for ``:text``). Identifier type goes to
  ``type_system``/``type_code`` (for ``:of-type``). Booleans are
  ``"true"``/``"false"``.
* **reference** (``search.html`` §3.1.1.7, ``references.html``): relative
  ``Type/id[/_history/v]`` fills ``target_type``/``target_id``/``version``
  and leaves ``url`` empty; an absolute URL is kept whole in ``url``, and if
  it ends in ``Type/id[/_history/v]`` those are filled too; ``urn:uuid:``,
  ``urn:oid:`` and ``#local`` references are kept in ``url`` with the
  Reference.type (if any) as ``target_type``. Canonicals ``url|version`` are
  split. ``Reference.identifier`` gives a :class:`ReferenceIdentifierValue`
  (for the ``:identifier`` modifier).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from salus.fhir.search.resource_types import is_resource_type

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "NUMBER_MAX",
    "NUMBER_MIN",
    "CompositeValue",
    "DateValue",
    "IndexValue",
    "NumberValue",
    "QuantityValue",
    "ReferenceIdentifierValue",
    "ReferenceValue",
    "StringValue",
    "TokenValue",
    "UriValue",
    "date_interval",
    "decimal_range",
    "normalize_string",
    "parse_reference",
]

#: Open ends of date intervals (a Period without start or end).
DATE_MIN = datetime.min.replace(tzinfo=UTC)
DATE_MAX = datetime.max.replace(tzinfo=UTC)
#: Open ends of number and quantity ranges (26 integer digits: NUMERIC(38, 12)).
NUMBER_MAX = Decimal("99999999999999999999999999")
NUMBER_MIN = -NUMBER_MAX


@dataclass(frozen=True, slots=True)
class TokenValue:
    """A token (``search.html`` §3.1.1.3): Coding, CodeableConcept, Identifier,
    ContactPoint, code, boolean, id, string."""

    param: str
    system: str | None
    code: str | None
    text: str | None = None
    type_system: str | None = None
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class StringValue:
    """A string (``search.html`` §3.1.1.6); one per HumanName or Address part."""

    param: str
    normalized: str
    exact: str


@dataclass(frozen=True, slots=True)
class DateValue:
    """A date interval, both ends inclusive, aware UTC (``search.html`` §3.1.1.4)."""

    param: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number's precision range ``[low, high)`` (``search.html`` §3.1.1.1)."""

    param: str
    low: Decimal
    high: Decimal
    value: Decimal | None = None


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """A Quantity (Age, Duration, Count, Distance), Money or Range (``search.html`` §3.1.1.5)."""

    param: str
    system: str | None
    code: str | None
    unit: str | None
    low: Decimal
    high: Decimal
    value: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference, canonical or uri reference (``search.html`` §3.1.1.7)."""

    param: str
    target_type: str | None
    target_id: str | None
    url: str | None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceIdentifierValue:
    """``Reference.identifier``, for ``[param]:identifier=system|value``."""

    param: str
    system: str | None
    code: str | None
    type_system: str | None = None
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    """A uri, url or canonical (``search.html`` §3.1.1.8)."""

    param: str
    value: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """One combination of component values (``search.html`` §3.1.1.9 "composite")."""

    param: str
    parts: tuple[IndexValue, ...]


IndexValue = (
    TokenValue
    | StringValue
    | DateValue
    | NumberValue
    | QuantityValue
    | ReferenceValue
    | ReferenceIdentifierValue
    | UriValue
    | CompositeValue
)

# -- strings -----------------------------------------------------------------------------

#: Letters with no Unicode decomposition that users type without the mark.
_FOLD = str.maketrans(
    {
        "đ": "d",
        "ð": "d",
        "ø": "o",
        "ł": "l",
        "ħ": "h",
        "ı": "i",
        "ŧ": "t",
        "æ": "ae",
        "œ": "oe",
        "ß": "ss",
        "þ": "th",
    }
)


@lru_cache(maxsize=65536)
def normalize_string(value: str) -> str:
    """Case- and accent-insensitive form of ``value`` (``search.html`` §3.1.1.6).

    ``"Nguyễn Văn Đức"`` → ``"nguyen van duc"``; ``"김민준"`` stays ``"김민준"``.
    """
    if value.isascii():
        return value.lower()
    folded = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return unicodedata.normalize("NFKC", stripped.translate(_FOLD))


# -- dates -------------------------------------------------------------------------------

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_US = timedelta(microseconds=1)


def _next_month(year: int, month: int) -> datetime | None:
    if month == 12:
        return None if year == 9999 else datetime(year + 1, 1, 1, tzinfo=UTC)
    return datetime(year, month + 1, 1, tzinfo=UTC)


@lru_cache(maxsize=65536)
def date_interval(value: str) -> tuple[datetime, datetime] | None:
    """The interval a FHIR date, dateTime or instant covers (``search.html`` §3.1.1.4).

    None if ``value`` is not a valid FHIR date/dateTime/instant.
    """
    match = _DATE.fullmatch(value.strip())
    if match is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, frac_s, zone = match.groups()
    try:
        year = int(year_s)
        if month_s is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            end = None if year == 9999 else datetime(year + 1, 1, 1, tzinfo=UTC)
            return low, (end - _US) if end else DATE_MAX
        month = int(month_s)
        if day_s is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            end = _next_month(year, month)
            return low, (end - _US) if end else DATE_MAX
        day = int(day_s)
        if hour_s is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return low, min(low + timedelta(days=1) - _US, DATE_MAX)
        micro = 0
        if second_s is None:
            step = timedelta(minutes=1)
        elif frac_s is None:
            step = timedelta(seconds=1)
        else:
            digits = frac_s[:6]
            micro = int(digits.ljust(6, "0"))
            step = timedelta(microseconds=10 ** (6 - len(digits)))
        local = datetime(
            year, month, day, int(hour_s), int(minute_s), int(second_s or 0), micro, tzinfo=UTC
        )
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            local = local - sign * offset
        return local, local + step - _US
    except (ValueError, OverflowError):
        return None


# -- numbers -----------------------------------------------------------------------------


def _clamp(value: Decimal) -> Decimal:
    return NUMBER_MIN if value < NUMBER_MIN else NUMBER_MAX if value > NUMBER_MAX else value


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number as a Decimal that keeps the digits as written (floats via repr)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        try:
            result = Decimal(repr(value))
        except InvalidOperation:  # pragma: no cover - repr of a float always parses
            return None
        return result if result.is_finite() else None
    return None  # strings (FHIR JSON numbers are never quoted), objects


def decimal_range(value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    """``(low, high, value)``: the implicit precision range ``[low, high)`` of a number.

    ``100`` → [99.5, 100.5); ``100.00`` → [99.995, 100.005) (``search.html``
    §3.1.1.1: "the precision of the value is taken into account").

    A JSON number (an int or a float) is looked up in a cache first: an
    Observation's value is indexed by four parameters (``value-quantity``,
    ``combo-value-quantity`` and two composites).
    """
    kind = type(value)
    if kind is int or (kind is float and value):  # not bool (no range), nor ±0.0 (equal keys)
        return _number_range(value)
    return _decimal_range(value)


@lru_cache(maxsize=4096, typed=True)  # typed: 1 and 1.0 are different numbers as written
def _number_range(value: float | int) -> tuple[Decimal, Decimal, Decimal] | None:
    return _decimal_range(value)


def _decimal_range(value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    number = to_decimal(value)
    if number is None:
        return None
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # noqa: S101 - finite decimals have an int exponent
    half = Decimal((0, (5,), exponent - 1))
    return _clamp(number - half), _clamp(number + half), number


# -- references --------------------------------------------------------------------------

_TYPED = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$"
)


@lru_cache(maxsize=65536)
def parse_reference(
    reference: str,
) -> tuple[str | None, str | None, str | None, str | None]:
    """``(target_type, target_id, url, version)`` of a reference or canonical string.

    ``Patient/1`` → ``("Patient", "1", None, None)``;
    ``https://x.org/fhir/Patient/1/_history/2`` → ``("Patient", "1", <whole>, "2")``;
    ``http://x.org/Questionnaire/q|3.0`` → ``("Questionnaire", "q", "http://x.org/Questionnaire/q",
    "3.0")``; ``urn:uuid:…``, ``#id`` and conditional references
    (``Patient?identifier=s|v``) → ``(None, None, <whole>, None)``.
    """
    ref = reference.strip()
    if not ref:
        return None, None, None, None
    if ref.startswith(("urn:", "#")) or "?" in ref:  # also conditional references (a search)
        return None, None, ref, None
    version = None
    absolute = "://" in ref
    if "|" in ref:
        ref, version = ref.split("|", 1)
        absolute = True  # a canonical: keep the url
    match = _TYPED.search(ref)
    if match is None or not is_resource_type(match.group(1)):
        return None, None, ref, version
    rtype, rid, hist = match.groups()
    if not absolute and match.start() != 0:  # "a/b/Patient/1" without a scheme: keep whole
        return rtype, rid, ref, hist or version
    return rtype, rid, (ref if absolute else None), hist or version
