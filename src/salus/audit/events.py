"""Audit events and their canonical, hashed form.

An :class:`AuditEvent` is what a service records: who (the principal), did
what (``action``, as FHIR R4 ``AuditEvent.action``: C, R, U, D, E), to what
(``patient_key``, ``entity``), why (``purpose``, an HL7 v3 ActReason code)
and with which result (``outcome``, as FHIR R4 ``AuditEvent.outcome``: 0, 4,
8, 12; FHIR ``auditevent.html``, value set ``audit-event-outcome``).

The chain (:mod:`salus.audit.chain`) gives each event a ``seq`` and a
``recorded_at`` and stores it with ``hash = SHA-256(prev_hash ‖ canonical
JSON)``; :func:`canonical_json` and :func:`event_hash` define that form
exactly, so that a verifier outside Salus can recompute every hash (see
:func:`event_hash`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from salus.errors import InvalidInput
from salus.logging import request_id_var
from salus.security.principal import Principal, Purpose

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "AuditAction",
    "AuditCategory",
    "AuditEvent",
    "AuditFlag",
    "AuditOutcome",
    "canonical_json",
    "canonical_record",
    "event_hash",
    "iso_utc",
    "split_flags",
]

#: ``prev_hash`` of the first event (seq 1): 64 zeros.
GENESIS_HASH = "0" * 64


class AuditCategory(StrEnum):
    """Which edge or subsystem recorded the event."""

    REST = "rest"  # FHIR REST and the other HTTP APIs
    AUTH = "auth"  # logins, token requests, logouts
    ADMIN = "admin"  # users, clients, roles, keys, settings
    DICOM = "dicom"  # DIMSE and DICOMweb
    HL7 = "hl7"  # HL7 v2 over MLLP
    EXPORT = "export"  # bulk data and de-identified extracts
    SECURITY = "security"  # refusals, break-the-glass, integrity alarms
    SYSTEM = "system"  # Salus itself: start, stop, jobs


class AuditAction(StrEnum):
    """FHIR R4 ``AuditEvent.action`` (value set ``audit-event-action``)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class AuditOutcome(IntEnum):
    """FHIR R4 ``AuditEvent.outcome`` (value set ``audit-event-outcome``)."""

    SUCCESS = 0
    MINOR = 4  # minor failure: the action was not successful
    SERIOUS = 8  # serious failure: the action was terminated
    MAJOR = 12  # major failure: the action made the server unavailable


class AuditFlag(StrEnum):
    """Markers stored in ``flags`` (comma-separated) for reports and alerts."""

    BREAK_GLASS = "break-glass"  # access under an emergency (ETREAT) grant
    REFUSED = "refused"  # the request was refused by the access policy
    CONSENT_OVERRIDE = "consent-override"  # a consent denial was overridden


# Column sizes of ``audit_events`` (src/salus/db/tables.py): checked here so
# that both backends refuse the same events (SQLite does not enforce them).
_MAX_LENGTH: dict[str, int] = {
    "principal_kind": 10,
    "principal_id": 100,
    "org_id": 64,
    "client_id": 100,
    "address": 64,
    "purpose": 20,
    "patient_key": 64,
    "entity": 300,
    "description": 300,
    "request_id": 64,
    "flags": 100,
}

#: The keys of the canonical record, in their (sorted) canonical order.
HASHED_FIELDS: tuple[str, ...] = (
    "action",
    "address",
    "category",
    "client_id",
    "description",
    "detail",
    "entity",
    "flags",
    "org_id",
    "outcome",
    "patient_key",
    "principal_id",
    "principal_kind",
    "purpose",
    "recorded_at",
    "request_id",
    "seq",
)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding used for hashing and signing.

    UTF-8; object keys sorted by Unicode code point; no whitespace
    (separators ``,`` and ``:``); non-ASCII characters written as themselves;
    ``"`` and ``\\`` and control characters escaped as JSON requires
    (``\\n``, ``\\t``…, others as ``\\u00xx``, lowercase hex); integers in
    decimal; ``NaN`` and infinities refused. Floats (only possible inside
    ``detail``) are written as Python's shortest round-trip ``repr``.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        raise InvalidInput("Audit data must be JSON: strings, numbers, lists, objects.") from None


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2026-11-23T08:00:00.000000Z``."""
    if value.tzinfo is None:
        raise InvalidInput("Audit timestamps must be timezone-aware.")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """The object that is hashed: every key of :data:`HASHED_FIELDS`, nulls kept.

    ``values`` is an ``audit_events`` row (or the same keys); ``recorded_at``
    becomes :func:`iso_utc` text, ``seq`` and ``outcome`` integers.
    """
    record = {name: values.get(name) for name in HASHED_FIELDS}
    record["seq"] = int(values["seq"])
    record["outcome"] = int(values["outcome"])
    record["recorded_at"] = iso_utc(values["recorded_at"])
    return record


def event_hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    """``hash`` of an event: lowercase hex SHA-256 of ``prev_hash ‖ canonical``.

    Exactly::

        hash = hex(SHA-256(ASCII(prev_hash) + canonical_json(record)))

    where ``prev_hash`` is the 64 lowercase hex digits of the previous event's
    hash (64 zeros before seq 1) and ``record`` is a JSON object with exactly
    the keys ``action, address, category, client_id, description, detail,
    entity, flags, org_id, outcome, patient_key, principal_id,
    principal_kind, purpose, recorded_at, request_id, seq`` (absent values
    as ``null``; ``seq`` and ``outcome`` numbers; ``recorded_at`` as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC), encoded by :func:`canonical_json`.
    For example, with every optional field null::

        {"action":"R","address":null,"category":"rest",…,"recorded_at":
         "2026-11-23T08:00:00.000000Z","request_id":null,"seq":1}
    """
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(canonical_record(values)))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event to record; the chain adds ``seq``, ``recorded_at`` and hashes.

    Values are checked on construction (enumerations, column sizes, JSON
    ``detail``) so that an event either is valid on every backend or is
    refused before any transaction. Error messages name fields, never values.
    """

    category: str
    action: str
    outcome: int = AuditOutcome.SUCCESS
    principal_kind: str | None = None
    principal_id: str | None = None
    org_id: str | None = None
    client_id: str | None = None
    address: str | None = None
    purpose: str | None = None
    patient_key: str | None = None
    entity: str | None = None
    description: str | None = None
    request_id: str | None = None
    flags: str | None = None
    detail: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Dict lookups rather than the enums' constructors (a write makes one
        # event per resource); a member hashes and compares as its value.
        try:
            category = _CATEGORIES[self.category]
            action = _ACTIONS[self.action]
            outcome = _OUTCOMES[self.outcome]
        except (KeyError, TypeError):
            raise InvalidInput("Audit event category, action or outcome is not valid.") from None
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "outcome", outcome)
        for name, limit in _MAX_LENGTH.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidInput(f"Audit event field {name} must be text.")
            value = str(value)  # plain str: StrEnum members become their value
            object.__setattr__(self, name, value)
            if len(value) > limit:
                raise InvalidInput(f"Audit event field {name} is longer than {limit}.")
            if "\x00" in value:
                raise InvalidInput(f"Audit event field {name} contains a NUL character.")
        if self.detail is not None:
            if not isinstance(self.detail, Mapping):
                raise InvalidInput("Audit event detail must be a JSON object.")
            if any(not isinstance(key, str) for key in self.detail):
                raise InvalidInput("Audit event detail keys must be text.")
            # Normalise to what JSON gives back from the database (tuples become
            # lists, keys sorted, and so on), so that the hash of the stored row
            # is the same.
            object.__setattr__(self, "detail", _normalized_detail(self.detail))

    @classmethod
    def for_principal(
        cls,
        principal: Principal | None,
        *,
        category: AuditCategory | str,
        action: AuditAction | str,
        outcome: AuditOutcome | int = AuditOutcome.SUCCESS,
        entity: str | None = None,
        patient_key: str | None = None,
        purpose: Purpose | str | None = None,
        description: str | None = None,
        request_id: str | None = None,
        flags: Iterable[AuditFlag | str] | str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """An event done by ``principal`` (``None``: not authenticated).

        Fills ``principal_kind``, ``principal_id``, ``org_id``, ``client_id``
        and ``address`` from the principal, and ``request_id`` from the current
        request's context when not given; ``flags`` may be a list of
        :class:`AuditFlag` values (stored comma-separated).
        """
        return cls(
            category=str(category),
            action=str(action),
            outcome=int(outcome),
            principal_kind=principal.kind.value if principal else None,
            principal_id=principal.id if principal else None,
            org_id=principal.org_id if principal else None,
            client_id=principal.client_id if principal else None,
            address=principal.address if principal else None,
            purpose=str(purpose) if purpose is not None else None,
            patient_key=patient_key,
            entity=entity,
            description=description,
            request_id=request_id if request_id is not None else request_id_var.get(),
            flags=_join_flags(flags),
            detail=detail,
        )

    def flag_set(self) -> frozenset[str]:
        return split_flags(self.flags)

    def row(self, *, seq: int, recorded_at: datetime, prev_hash: str) -> dict[str, Any]:
        """The ``audit_events`` row of this event at ``seq`` (hash included)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _EVENT_FIELDS}
        values.update(seq=seq, recorded_at=recorded_at, prev_hash=prev_hash)
        values["hash"] = event_hash(prev_hash, values)
        return values


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))

_CATEGORIES: dict[Any, str] = {m.value: m.value for m in AuditCategory}
_ACTIONS: dict[Any, str] = {m.value: m.value for m in AuditAction}
_OUTCOMES: dict[Any, int] = {int(m): int(m) for m in AuditOutcome}
#: Values that JSON gives back as they are (a text of ASCII: nothing to refuse).
_PLAIN_SCALARS = (int, bool, type(None))


def _normalized_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """``json.loads(canonical_json(detail))``: a flat object of integers,
    booleans, nulls and ASCII texts (a write's ``{"version": 2}``) is
    copied with its keys sorted instead of written and read."""
    if all(
        type(key) is str
        and key.isascii()
        and (type(value) in _PLAIN_SCALARS or (type(value) is str and value.isascii()))
        for key, value in detail.items()
    ):
        return dict(sorted(detail.items()))
    loaded: dict[str, Any] = json.loads(canonical_json(dict(detail)))
    return loaded


def _join_flags(flags: Iterable[AuditFlag | str] | str | None) -> str | None:
    if flags is None:
        return None
    items = [flags] if isinstance(flags, str) else [str(flag) for flag in flags]
    tokens: list[str] = []
    for item in items:
        for token in item.split(","):
            token = token.strip()
            if token and token not in tokens:
                tokens.append(token)
    return ",".join(tokens) or None


def split_flags(flags: str | None) -> frozenset[str]:
    """The set of flags of a stored ``flags`` value."""
    if not flags:
        return frozenset()
    return frozenset(token.strip() for token in flags.split(",") if token.strip())
