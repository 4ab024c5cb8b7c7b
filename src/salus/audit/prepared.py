"""Audit events made ready for the chain before the write transaction.

:meth:`salus.audit.chain.AuditLog.prepare` does here whatever part of an
append needs no chain head: the canonical record of each event without
``recorded_at`` and ``seq`` (:meth:`AuditEvent.canonical_parts`; the hash
definition itself stays :func:`salus.audit.events.event_hash`) and the
values the database driver takes: SQLite's row tuples (through the column
types' bind processors, as SQLAlchemy would send them) or the array
parameters of PostgreSQL's ``salus_audit_append`` (migration 0015). Under the
head's lock the chain then only hashes ``prev_hash ‖ prefix ‖ recorded_at ‖
mid ‖ seq`` and writes (ADR 21, stop-14 second round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from salus.audit.events import AuditEvent, canonical_json
from salus.db.tables import audit_events

__all__ = ["PreparedAudit", "SqliteInsert", "pg_arrays"]

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
#: An event's own columns, then those the chain fills in under the lock.
_EVENT_COLUMNS = tuple(f.name for f in fields(AuditEvent))
_CHAINED_COLUMNS = ("seq", "recorded_at", "prev_hash", "hash")


class SqliteInsert:
    """The ``audit_events`` INSERT for SQLite's driver, with the bind processors
    of the column types (the values SQLAlchemy's ``Connection.execute`` sends,
    so the stored rows are the same)."""

    def __init__(self, dialect: Any) -> None:
        names = (*_EVENT_COLUMNS, *_CHAINED_COLUMNS)
        columns = ", ".join(f'"{audit_events.c[name].name}"' for name in names)
        marks = ", ".join("?" for _ in names)
        self.sql = f'INSERT INTO "audit_events" ({columns}) VALUES ({marks})'  # noqa: S608 - names from the Table
        processors: dict[str, Callable[[Any], Any] | None] = {
            name: audit_events.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        }
        self.event_processors = tuple(
            (position, processor)
            for position, name in enumerate(_EVENT_COLUMNS)
            if (processor := processors[name]) is not None
        )
        if any(processors[name] is not None for name in ("seq", "prev_hash", "hash")):
            raise RuntimeError("audit_events: seq and hashes are passed to SQLite as they are")
        recorded = processors["recorded_at"]
        self.recorded_at: Callable[[Any], Any] = recorded if recorded else (lambda value: value)

    def values(self, event: AuditEvent) -> tuple[Any, ...]:
        """The driver values of ``event``'s own columns (its dataclass fields, in order)."""
        values = [getattr(event, name) for name in _EVENT_COLUMNS]
        for position, processor in self.event_processors:
            values[position] = processor(values[position])
        return tuple(values)


class PreparedAudit:
    """Events made ready for an append before the write transaction
    (:meth:`AuditLog.prepare`): each one's canonical record without
    ``recorded_at`` and ``seq`` (:meth:`AuditEvent.canonical_parts`) and its
    row's driver values (SQLite) or the array parameters of
    ``salus_audit_append`` (PostgreSQL). Under the chain head's lock only the
    hashes are chained (:func:`salus.audit.events.chained_hash`) and the rows written (ADR 21,
    stop-14 second round)."""

    __slots__ = ("events", "parts", "pg", "values")

    def __init__(
        self,
        events: list[AuditEvent],
        parts: list[tuple[bytes, bytes]],
        values: list[tuple[Any, ...]] | None = None,
        pg: dict[str, list[Any]] | None = None,
    ) -> None:
        self.events = events
        self.parts = parts
        self.values = values
        self.pg = pg

    def __len__(self) -> int:
        return len(self.events)

    @classmethod
    def concat(cls, prepared: Sequence[PreparedAudit]) -> PreparedAudit:
        """Several prepared batches as one, in order (group commit)."""
        values: list[tuple[Any, ...]] | None = None
        if all(part.values is not None for part in prepared):
            values = [v for part in prepared for v in part.values or ()]
        pg: dict[str, list[Any]] | None = None
        if prepared and all(part.pg is not None for part in prepared):
            pg = {name: [] for name in prepared[0].pg or ()}
            for part in prepared:
                for name, column in (part.pg or {}).items():
                    pg[name].extend(column)
        return cls(
            [e for part in prepared for e in part.events],
            [x for part in prepared for x in part.parts],
            values,
            pg,
        )


def pg_arrays(
    events: Sequence[AuditEvent], parts: Sequence[tuple[bytes, bytes]]
) -> dict[str, list[Any]]:
    """The array parameters of ``salus_audit_append`` but ``recorded_at``: each
    event's canonical JSON in two parts around ``recorded_at`` and ``seq``
    (:meth:`AuditEvent.canonical_parts`) and its columns."""
    arrays: dict[str, list[Any]] = {
        name: [getattr(event, name) for event in events] for name in _PG_TEXT_COLUMNS
    }
    arrays["prefix"] = [prefix.decode("utf-8") for prefix, _ in parts]
    arrays["mid"] = [mid.decode("utf-8") for _, mid in parts]
    arrays["outcome"] = [int(event.outcome) for event in events]
    arrays["detail"] = [
        None if event.detail is None else canonical_json(dict(event.detail)).decode("utf-8")
        for event in events
    ]
    return arrays
