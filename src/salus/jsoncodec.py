"""JSON in and out of the FHIR paths, fast, with the standard library's results.

A transaction Bundle of 100 resources is parsed once and each of its
resources is written as compact JSON for storage; a search page is read back
from stored JSON and answered as one Bundle. The standard library's ``json``
did that in about a tenth of the server's CPU. orjson (a C extension) does
the same work several times faster, but differs from ``json`` at the edges,
so :func:`loads` and :func:`dumps` fall back to ``json`` wherever the two
could differ, and give ``json``'s result everywhere:

* orjson reads an integer beyond 64 bits as a float (losing digits) where
  ``json`` keeps it exact: text with a run of 19 or more digits is read by
  ``json``;
* orjson refuses what ``json`` accepts (``NaN`` and ``Infinity``, a number
  too large for a double, a lone surrogate escape ``\\ud800``, UTF-16 or
  UTF-32 text, a UTF-8 byte order mark, invalid UTF-8 that ``json``
  decodes with ``surrogatepass``): on its refusal ``json`` reads the text,
  and accepts or refuses it as before. ``strict`` refuses what no request
  body may hold: the non-numbers, which are not JSON (RFC 8259 §6), and
  lone surrogates, which are no Unicode text (RFC 8259 §8.2) and could not
  be stored as UTF-8;
* orjson writes ``NaN`` as ``null`` and refuses integers beyond 64 bits and
  lone surrogates: such values are written by ``json``, and so are dates and
  dataclasses, which orjson would write and ``json`` refuses (``TypeError``).

The texts they write differ only in the form of some floats (orjson
``1e16``, ``json`` ``1e+16``), which read back as the same numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

#: Digits to ``0``, every other byte to ``.``: a run of :data:`_LONG_RUN` in
#: the result is a run of digits that may be an integer beyond 64 bits
#: (-2**63 - 1 has 19 digits). ``bytes.translate`` and ``in`` scan a Bundle
#: in a few microseconds, where a regular expression takes as long as parsing.
_DIGIT_MAP = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
_LONG_RUN = b"0" * 19

#: What orjson would write and json refuses: json decides (TypeError).
_PASS_THROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(data: bytes | bytearray | memoryview | str, *, strict: bool = False) -> Any:
    """``json.loads(data)``; with ``strict``, ``NaN``, ``Infinity``,
    ``-Infinity``, lone surrogates (``"\\ud800"``) and nesting too deep for
    the parser (``RecursionError`` otherwise) raise ValueError like invalid
    JSON."""
    raw: bytes | bytearray | None
    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # a lone surrogate: json decides
            raw = None
    else:
        raw = bytes(data) if isinstance(data, memoryview) else data
        data = raw
    if raw is not None and _LONG_RUN not in raw.translate(_DIGIT_MAP):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json decides, with its own message
    if not strict:
        return json.loads(data)
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:  # nested too deep: refused like any invalid JSON
        raise ValueError("nested too deep") from None
    try:  # orjson refused it or never saw it: no lone surrogate (rare path)
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("a string is not Unicode text (a lone surrogate)") from None
    return value


def dumps(value: Any, *, allow_nan: bool = True) -> bytes:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False,
    allow_nan=allow_nan).encode()`` (some floats in another form of the same
    number)."""
    try:
        encoded = orjson.dumps(value, option=_PASS_THROUGH)
    except TypeError:  # an integer beyond 64 bits, a lone surrogate, another type
        return _json_dumps(value, allow_nan)
    if b"null" in encoded and _has_non_finite(value):
        return _json_dumps(value, allow_nan)  # NaN as json writes it, or its refusal
    return encoded


def _json_dumps(value: Any, allow_nan: bool) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
    ).encode()


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity (which orjson writes as null)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False
