"""The request and response of the FHIR router, and the HTTP details it parses
(FHIR R4 http.html): JSON bodies, forms for POST ``_search``, ``If-Match``,
``_count`` and ``_since``, and the date formats of headers and Bundles."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from salus import jsoncodec
from salus.audit.events import AuditEvent
from salus.errors import InvalidInput
from salus.security.principal import Principal, Purpose

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "FhirRequest",
    "FhirResponse",
    "count_param",
    "form_params",
    "http_date",
    "if_match",
    "instant",
    "parse_json_body",
    "since_param",
]

MAX_COUNT = 1000
DEFAULT_COUNT = 50


@dataclass(frozen=True, slots=True)
class FhirRequest:
    method: str
    path: str  # below the FHIR base, without a leading slash
    query: list[tuple[str, str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes | None
    principal: Principal
    purpose: Purpose | None
    base_url: str

    def param(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class FhirResponse:
    status: int
    resource: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Read events the adapter records (group commit) before answering.
    audit: list[AuditEvent] = field(default_factory=list)
    #: ``resource`` as JSON bytes when they are at hand (a stored body, read by
    #: id): the adapter sends them instead of serializing ``resource`` again.
    raw: bytes | None = None


def parse_json_body(body: bytes | None) -> dict[str, Any]:
    if not body:
        raise InvalidInput("The request has no body.")
    try:
        value = jsoncodec.loads(body, strict=True)
    except ValueError:  # UnicodeDecodeError is one too
        raise InvalidInput("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise InvalidInput("The body must be a JSON object (a FHIR resource).")
    return value


def form_params(request: FhirRequest) -> dict[str, list[str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidInput("POST _search takes application/x-www-form-urlencoded.")
    return parse_qs((request.body or b"").decode("utf-8", "replace"), keep_blank_values=True)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(value: datetime) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, in English whatever the process locale."""
    v = value.astimezone(UTC) if value.tzinfo is not None else value
    return (
        f"{_DAYS[v.weekday()]}, {v.day:02d} {_MONTHS[v.month - 1]} {v.year:04d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d} GMT"
    )


def instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def if_match(headers: Mapping[str, str]) -> int | None:
    value = headers.get("if-match")
    if value is None:
        return None
    match = re.fullmatch(r'\s*(?:W/)?"?([0-9]{1,9})"?\s*', value)
    if not match:
        raise InvalidInput(
            'If-Match must be a version ETag such as W/"3".', expression=["If-Match"]
        )
    return int(match.group(1))


def count_param(request: FhirRequest) -> int:
    raw = request.param("_count")
    if raw is None:
        return DEFAULT_COUNT
    if not raw.isdigit():
        raise InvalidInput("_count must be a non-negative integer.", expression=["_count"])
    return min(int(raw), MAX_COUNT)


def since_param(request: FhirRequest) -> datetime | None:
    raw = request.param("_since")
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("_since must be an instant.", expression=["_since"]) from None
    if value.tzinfo is None:
        raise InvalidInput("_since must include a time zone.", expression=["_since"])
    return value
