"""The PostgreSQL audit append: one ``salus_audit_append`` statement (migration 0015, ADR 21).

The function locks the chain head, numbers the events, computes each
``hash = SHA-256(prev_hash ‖ canonical JSON)`` (:func:`salus.audit.events.event_hash`),
inserts the events and moves the head. The client sends each event's
canonical JSON in two parts around ``recorded_at`` and ``seq``, which the
function adds. This module holds the statement (:data:`PG_RECORD`), its
parameters as one JSON text (:func:`pg_json_events`; :func:`_pg_json_parts`
puts them inside a larger statement) and the mapping of the function's errors
(:func:`raise_pg_error`); :class:`salus.audit.chain.AuditLog` uses them. Split
out of :mod:`salus.audit.chain` (stop 16). Since stop 18 every append sends
the JSON text: the 16 arrays psycopg quoted element by element in Python are
gone (18 % of the server's CPU in a Bundle of 100 Observations).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from salus.audit.events import HASHED_FIELDS, AuditEvent, canonical_json, iso_utc
from salus.errors import IntegrityError, Unavailable

# PostgreSQL: the whole append in one statement (migration 0015, ADR 21).
_PG_TEXT_COLUMNS = (
    "category",
    "action",
    "principal_kind",
    "principal_id",
    "org_id",
    "client_id",
    "address",
    "purpose",
    "patient_key",
    "entity",
    "description",
    "request_id",
    "flags",
)
_PG_BEFORE_RECORDED_AT = tuple(name for name in HASHED_FIELDS if name < "recorded_at")
if tuple(name for name in HASHED_FIELDS if name > "recorded_at") != ("request_id", "seq"):
    raise RuntimeError("salus_audit_append assumes request_id and seq follow recorded_at")
#: The array arguments of ``salus_audit_append`` in order (after the two
#: ``recorded_at`` values; migration 0015).
_PG_ARGUMENTS = ("prefix", "mid", *_PG_TEXT_COLUMNS[:2], "outcome", *_PG_TEXT_COLUMNS[2:], "detail")
#: The values of one event in :meth:`AuditLog.pg_append_json`'s JSON, in order.
_PG_JSON_COLUMNS = ("prefix", "mid", "outcome", "detail", *_PG_TEXT_COLUMNS)
if sorted(_PG_JSON_COLUMNS) != sorted(_PG_ARGUMENTS):
    raise RuntimeError("salus_audit_append's arguments are not those of the JSON events")
#: The SQLSTATE the function raises for an inconsistent head.
_PG_HEAD_ERROR = "SA001"
#: undefined_function: a database that was not migrated to 0015.
_PG_NO_FUNCTION = "42883"


#: :meth:`AuditLog.pg_append_json`'s FROM item and call, by name.
_PG_JSON_PARTS: dict[str, tuple[str, str]] = {}


def _pg_json_parts(name: str) -> tuple[str, str]:
    if not name.isidentifier():
        raise ValueError("not an SQL name")
    # One pass over the events: every array is aggregated from the same rows
    # in the same order (jsonb_array_elements gives the array's order), so the
    # i-th element of each array belongs to the i-th event. jsonb: the text is
    # parsed once (strings are kept exactly); ->> on json parses the element
    # again for every field.
    aggregates = ", ".join(
        f"array_agg((e->>{n})::smallint) AS {column}"
        if column == "outcome"
        else f"array_agg(e->>{n}) AS {column}"
        for n, column in enumerate(_PG_JSON_COLUMNS)
    )
    from_item = (  # names from this module; the values are one parameter
        f"(SELECT {aggregates} FROM jsonb_array_elements(CAST(%({name}_events)s AS jsonb))"  # noqa: S608
        f" AS t(e)) AS {name}"
    )
    arguments = ", ".join(f"{name}.{column}" for column in _PG_ARGUMENTS)
    return from_item, f"salus_audit_append(%({name}_at)s, %({name}_text)s, {arguments})"


def pg_json_events(events: Sequence[AuditEvent]) -> str:
    """The events of :meth:`AuditLog.pg_append_json` as one JSON text: per
    event the values of :data:`_PG_JSON_COLUMNS`, in order."""
    rows = []
    for event in events:
        record = {key: getattr(event, key) for key in _PG_BEFORE_RECORDED_AT}
        record["outcome"] = int(event.outcome)
        detail = event.detail
        rows.append(
            [
                canonical_json(record).decode("utf-8")[:-1],
                ',"request_id":' + canonical_json(event.request_id).decode("utf-8") + ',"seq":',
                int(event.outcome),
                None if detail is None else canonical_json(dict(detail)).decode("utf-8"),
                *(getattr(event, key) for key in _PG_TEXT_COLUMNS),
            ]
        )
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def raise_pg_error(exc: BaseException | None) -> None:
    """Raise the chain's own error for a driver error ``exc`` of a statement
    calling ``salus_audit_append`` (head missing, function missing); return
    for any other error."""
    state = getattr(exc, "sqlstate", None)
    if state == _PG_HEAD_ERROR:
        raise IntegrityError("The audit chain head is missing but events exist.") from None
    if state == _PG_NO_FUNCTION:  # one rule, one implementation: no fallback (ADR 21)
        raise Unavailable("The database schema is not up to date; run 'salus migrate'.") from None


def _record_statement() -> str:
    from_item, call = _pg_json_parts("audit")
    return f"SELECT {call} FROM {from_item}"  # noqa: S608 - names from this module only


#: An append as one statement: alone in autocommit for a group commit
#: (:meth:`AuditLog.record_batch` and the event loop's batches), or inside the
#: caller's transaction (:meth:`AuditLog.append`). The events travel as one
#: JSON text, as :meth:`AuditLog.pg_append_json` sends them. With 16 arrays
#: psycopg quoted every element in Python: 0.62-0.69 ms of client CPU per
#: append of 4 events, 0.33-0.43 ms with the JSON text (PostgreSQL 0.37-0.45
#: against 0.43-0.52 ms; ADR 11 stop-16 amendment).
PG_RECORD = _record_statement()


def pg_record_params(events: Sequence[AuditEvent], recorded_at: datetime) -> dict[str, Any]:
    """The parameters of :data:`PG_RECORD` for ``events``."""
    return {
        "audit_at": recorded_at,
        "audit_text": iso_utc(recorded_at),
        "audit_events": pg_json_events(events),
    }
