"""``lowBoundary()`` and ``highBoundary()`` (FHIRPath N2 §"lowBoundary", §"highBoundary").

The boundaries of a value given its precision: ``1.0`` lies in
``[0.95, 1.05]``, the date ``1970-06`` in ``[1970-06-01, 1970-06-30]``, a
dateTime without a time zone spans every zone from +14:00 to -12:00. JSON
decimals arrive as Python floats; their precision is that of their shortest
representation (``repr``), which is the one FHIR JSON wrote unless it had
trailing zeros.
"""

from __future__ import annotations

import calendar
import re
from decimal import Decimal
from typing import Any

__all__ = ["high_boundary", "low_boundary"]

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?"
    r"(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?(Z|[+-]\d{2}:\d{2})?$"
)
_TIME = re.compile(r"^T?(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")


def low_boundary(value: Any, type_name: str | None, precision: int | None = None) -> Any:
    return _boundary(value, type_name, precision, high=False)


def high_boundary(value: Any, type_name: str | None, precision: int | None = None) -> Any:
    return _boundary(value, type_name, precision, high=True)


def _boundary(value: Any, type_name: str | None, precision: int | None, *, high: bool) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return _decimal(value, high)
    if not isinstance(value, str):
        return None
    kind = type_name or _guess(value)
    if kind == "date":
        return _date(value, high)
    if kind in ("dateTime", "instant"):
        return _datetime(value, high)
    if kind == "time":
        return _time(value, high)
    return None


def _guess(value: str) -> str | None:
    if _DATE.match(value):
        return "date"
    if "T" in value[1:] and _DATETIME.match(value):
        return "dateTime"
    if _TIME.match(value):
        return "time"
    return None


def _decimal(value: int | float | Decimal, high: bool) -> Decimal:
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    places = max(-int(exact.as_tuple().exponent), 0)
    half = Decimal(5).scaleb(-(places + 1))
    return exact + half if high else exact - half


def _last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _date(value: str, high: bool) -> str | None:
    match = _DATE.match(value)
    if match is None:
        return None
    year, month, day = match.groups()
    month = month or ("12" if high else "01")
    if day is None:
        day = f"{_last_day(int(year), int(month)):02d}" if high else "01"
    return f"{year}-{month}-{day}"


def _datetime(value: str, high: bool) -> str | None:
    match = _DATETIME.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    date = _date(f"{year}-{month}-{day}" if day else (f"{year}-{month}" if month else year), high)
    clock = _clock(hour, minute, second, fraction, high)
    if zone is None:
        zone = "-12:00" if high else "+14:00"
    return f"{date}T{clock}{zone}"


def _clock(
    hour: str | None, minute: str | None, second: str | None, fraction: str | None, high: bool
) -> str:
    hour = hour or ("23" if high else "00")
    minute = minute or ("59" if high else "00")
    second = second or ("59" if high else "00")
    if fraction is None:
        fraction = "999" if high else "000"
    else:
        fraction = (fraction + ("9" if high else "0") * 3)[: max(3, len(fraction))]
    return f"{hour}:{minute}:{second}.{fraction}"


def _time(value: str, high: bool) -> str | None:
    match = _TIME.match(value)
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    return _clock(hour, minute, second, fraction, high)
