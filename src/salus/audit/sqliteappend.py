"""Audit events appended on SQLite with their chain-free work done first.

SQLite has one writer at a time, and an :meth:`~salus.audit.chain.AuditLog.append`
runs inside the write transaction of the change it records, so every
microsecond of it is spent while all other writers wait (ADR 21, stop-17
amendment). Most of an event's hashed form does not depend on the chain:
the canonical JSON (:func:`salus.audit.events.canonical_json`) sorts its
keys, and the three that the chain gives, ``recorded_at``, ``request_id``
(not from the chain, but placed between the two) and ``seq``, are the last
three of :data:`~salus.audit.events.HASHED_FIELDS`. So the canonical text
of an event is exactly::

    head ‖ '"recorded_at":"' ‖ iso_utc(recorded_at) ‖ '",' ‖ tail ‖ decimal(seq) ‖ '}'

where ``head`` is the canonical JSON of the record without those three keys,
its closing ``}`` replaced by ``,``, and ``tail`` is
``'"request_id":' ‖ canonical_json(request_id) ‖ ',"seq":'``.
:func:`prepare_events` computes ``head`` and ``tail`` and the row's driver
values (through the column types' own bind processors, as SQLAlchemy's
``Connection.execute`` would) before the write lock; :func:`append_prepared`
does, under it, only the chaining: ``seq``, one ``recorded_at``, and
``hash = SHA-256(prev_hash ‖ text)`` per event, then one ``executemany`` on
the DBAPI connection and the head's move. The hash definition
(:func:`salus.audit.events.event_hash`) is unchanged; a test checks that both
give the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, overload

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from salus.audit.events import HASHED_FIELDS, AuditEvent, canonical_json, iso_utc
from salus.db.tables import audit_events, audit_head
from salus.errors import IntegrityError

__all__ = [
    "INSERT_SQL",
    "PreparedEvents",
    "append_prepared",
    "chain_rows",
    "prepare_events",
    "write_chained",
]

# The text can be split so only while these three keys sort last (they do:
# HASHED_FIELDS is the sorted key list); checked here rather than assumed.
_LAST = ("recorded_at", "request_id", "seq")
if HASHED_FIELDS[-3:] != _LAST or tuple(sorted(HASHED_FIELDS)) != HASHED_FIELDS:
    raise RuntimeError("the audit canonical record's last keys changed")
_HEAD_FIELDS = HASHED_FIELDS[:-3]

#: An ``audit_events`` row's columns in the order of the prepared values:
#: the event's own fields, then the four the chain gives.
_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_CHAIN_FIELDS = ("seq", "recorded_at", "prev_hash", "hash")
INSERT_SQL = (
    f'INSERT INTO "{audit_events.name}" ('  # noqa: S608 - names from the Table
    + ", ".join(f'"{audit_events.c[name].name}"' for name in (*_EVENT_FIELDS, *_CHAIN_FIELDS))
    + ") VALUES ("
    + ", ".join("?" for _ in (*_EVENT_FIELDS, *_CHAIN_FIELDS))
    + ")"
)
_MOVE_SQL = f'UPDATE "{audit_head.name}" SET "seq" = ?, "hash" = ? WHERE "id" = ? AND "seq" = ?'  # noqa: S608

Processor = Callable[[Any], Any]
_PROCESSORS: dict[str, tuple[tuple[Processor | None, ...], Processor | None]] = {}


def _processors(dialect: Dialect) -> tuple[tuple[Processor | None, ...], Processor | None]:
    """The bind processors of the event columns and of ``recorded_at``."""
    found = _PROCESSORS.get(dialect.name)
    if found is None:

        def processor(name: str) -> Processor | None:
            column_type = audit_events.c[name].type.dialect_impl(dialect)
            result: Processor | None = column_type.bind_processor(dialect)
            return result

        found = (tuple(processor(name) for name in _EVENT_FIELDS), processor("recorded_at"))
        _PROCESSORS[dialect.name] = found
    return found


class PreparedEvents(Sequence[AuditEvent]):
    """Audit events with what their rows and hashes need that is not chained:
    per event the canonical ``head`` and ``tail`` (see the module text) and
    the driver values of its own columns. A sequence of the events, so it goes
    wherever events go (:meth:`~salus.audit.chain.AuditLog.append` takes the
    fast path for it on SQLite)."""

    __slots__ = ("dialect", "events", "parts")

    def __init__(
        self,
        dialect: str,
        events: tuple[AuditEvent, ...],
        parts: list[tuple[bytes, bytes, tuple[Any, ...]]],
    ) -> None:
        self.dialect = dialect
        self.events = events
        self.parts = parts

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, index: int) -> AuditEvent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AuditEvent]: ...

    def __getitem__(self, index: int | slice) -> AuditEvent | Sequence[AuditEvent]:
        return self.events[index]

    def __iter__(self) -> Iterator[AuditEvent]:
        return iter(self.events)

    @classmethod
    def concat(cls, parts: Sequence[PreparedEvents]) -> PreparedEvents:
        """Several prepared sequences as one (all of one dialect)."""
        dialects = {part.dialect for part in parts}
        if len(dialects) != 1:
            raise ValueError("prepared audit events of different dialects")
        return cls(
            dialects.pop(),
            tuple(e for part in parts for e in part.events),
            [p for part in parts for p in part.parts],
        )


def prepare_events(
    dialect: Dialect,
    events: Sequence[AuditEvent],
    checkpoint: Callable[[], None] | None = None,
) -> PreparedEvents:
    """:class:`PreparedEvents` of ``events`` for ``dialect`` (no database).
    ``checkpoint``: called before each event (the FHIR write gate's, so that
    this work yields to a thread of the process holding the write lock)."""
    if isinstance(events, PreparedEvents) and events.dialect == dialect.name:
        return events
    processors, _ = _processors(dialect)
    parts: list[tuple[bytes, bytes, tuple[Any, ...]]] = []
    for event in events:
        if checkpoint is not None:
            checkpoint()
        if not isinstance(event, AuditEvent):
            raise TypeError("only AuditEvent objects are prepared")
        record = {name: getattr(event, name) for name in _HEAD_FIELDS}
        record["outcome"] = int(event.outcome)
        head = canonical_json(record)[:-1] + b","
        tail = b'"request_id":' + canonical_json(event.request_id) + b',"seq":'
        values = tuple(
            value if processor is None else processor(value)
            for processor, value in zip(
                processors, (getattr(event, name) for name in _EVENT_FIELDS), strict=True
            )
        )
        parts.append((head, tail, values))
    return PreparedEvents(dialect.name, tuple(events), parts)


def chain_rows(
    prepared: PreparedEvents,
    dialect: Dialect,
    seq: int,
    prev_hash: str,
    recorded_at: datetime,
) -> tuple[list[tuple[Any, ...]], int, str]:
    """The driver rows of ``prepared`` after the head (``seq``, ``prev_hash``):
    (rows, last seq, last hash). The hash is :func:`~salus.audit.events.event_hash`'s."""
    _, at_processor = _processors(dialect)
    at_value = recorded_at if at_processor is None else at_processor(recorded_at)
    at_text = b'"recorded_at":"' + iso_utc(recorded_at).encode("ascii") + b'",'
    sha256 = hashlib.sha256
    rows: list[tuple[Any, ...]] = []
    for head, tail, values in prepared.parts:
        seq += 1
        digest = sha256(prev_hash.encode("ascii"))
        digest.update(head + at_text + tail + str(seq).encode("ascii") + b"}")
        new_hash = digest.hexdigest()
        rows.append((*values, seq, at_value, prev_hash, new_hash))
        prev_hash = new_hash
    return rows, seq, prev_hash


def write_chained(
    cursor: Any,
    dialect: Dialect,
    prepared: PreparedEvents,
    head_seq: int,
    head_hash: str,
    recorded_at: datetime,
    head_id: int,
) -> int:
    """Insert ``prepared`` after the locked head with the DBAPI ``cursor`` of a
    SQLite write transaction and move the head; return the new head's seq.
    A driver error comes out as SQLAlchemy's, its parameters hidden (the
    events name patients)."""
    rows, seq, last_hash = chain_rows(prepared, dialect, head_seq, head_hash, recorded_at)
    dbapi = dialect.loaded_dbapi
    sql = INSERT_SQL
    try:
        cursor.executemany(sql, rows)
        sql = _MOVE_SQL
        cursor.execute(sql, (seq, last_hash, head_id, head_seq))
        moved = cursor.rowcount
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            sql, None, exc, dbapi.Error, hide_parameters=True, dialect=dialect
        ) from exc
    if moved != 1:
        raise IntegrityError("The audit chain head moved during an append.")
    return seq


def append_prepared(
    conn: Connection,
    prepared: PreparedEvents,
    head_seq: int,
    head_hash: str,
    recorded_at: datetime,
    head_id: int,
) -> list[int]:
    """Insert ``prepared`` after the locked head in ``conn``'s SQLite write
    transaction and move the head; return the new seqs."""
    driver: Any = conn.connection.driver_connection
    cursor = driver.cursor()
    try:
        seq = write_chained(
            cursor, conn.dialect, prepared, head_seq, head_hash, recorded_at, head_id
        )
    finally:
        cursor.close()
    return list(range(head_seq + 1, seq + 1))
