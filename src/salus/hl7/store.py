"""The durable HL7 message store (table ``hl7_messages``).

Every message that reaches Salus is recorded here, sealed with its own data
key for the context ``hl7:<uid>`` (:class:`~salus.storage.envelope.ValueSealer`,
as FHIR bodies are), before anything is acknowledged: accepted messages in
state ``received`` (then ``applied`` or ``failed``), refused ones in state
``rejected`` with the reason. A message that repeats the sending
organization, facility and MSH-10 of a stored one is a duplicate: the store
returns the original row instead of a new one (HL7 v2.8 2.10.1).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Insert,
    Select,
    TextClause,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from salus.db.engine import Database
from salus.db.tables_hl7 import hl7_messages
from salus.db.types import UTCDateTime, utcnow
from salus.errors import NotFound
from salus.storage.blobstore import RewrapReport
from salus.storage.envelope import ValueSealer

__all__ = ["MessageStore", "NewMessage", "Row"]

#: A stored row: read back, or (just inserted) the values written.
Row = Mapping[Any, Any]

#: Columns listed by ``salus hl7 list`` and the API (no body).
SUMMARY = [c for c in hl7_messages.c if c.name != "body"]


@dataclass(slots=True)
class NewMessage:
    raw: bytes
    source: str
    peer: str | None = None
    org_id: str | None = None
    client_id: str | None = None
    sending_application: str | None = None
    sending_facility: str = ""
    control_id: str | None = None
    message_type: str | None = None
    version: str | None = None
    processing_id: str | None = None
    charset: str | None = None
    ack_mode: str = "original"
    state: str = "received"
    ack_code: str | None = None
    error_code: str | None = None
    error_location: str | None = None
    error: str | None = None


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value is not None else None


Key = tuple[str | None, str, str | None]
#: Keys per duplicate query: SQLite parses ``a OR b OR …`` into a tree as deep
#: as the list is long, and refuses expressions deeper than 1,000.
_KEYS_PER_QUERY = 100


#: Attempts of a batch whose insert met a key committed meanwhile.
_BATCH_TRIES = 3
#: PostgreSQL SQLSTATEs worth another attempt: a deadlock (two batches in flight
#: inserting the same two keys in crossed order) and a serialization failure.
_RETRY_STATES = frozenset({"40P01", "40001"})


def _retryable(exc: IntegrityError | OperationalError) -> bool:
    """A unique-key conflict, or a transaction PostgreSQL aborted to break a deadlock."""
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.orig, "sqlstate", None) in _RETRY_STATES


def _key(value: dict[str, Any]) -> Key:
    """The duplicate-detection key of a row's values (clipped as stored)."""
    return (value["org_id"], value["sending_facility"], value["control_id"])


def _keyed(item: NewMessage) -> bool:
    """Whether duplicate detection applies (a known sender and an MSH-10)."""
    return item.org_id is not None and bool(item.control_id)


@functools.cache
def keys_statement(count: int) -> Select[Any]:
    """Rows with ``count`` (organization, facility, MSH-10) keys, bound as
    ``o0, f0, c0, …``: one OR of exact matches, built once per count.

    Not ``(a, b, c) IN (VALUES …)``: SQLite answers a row-value IN list by
    scanning the whole table, where an OR of equalities uses the unique
    index once per key (PostgreSQL uses the index for either).
    """
    c = hl7_messages.c
    return select(hl7_messages).where(
        or_(
            *(
                and_(
                    c.org_id == bindparam(f"o{i}"),
                    c.sending_facility == bindparam(f"f{i}"),
                    c.control_id == bindparam(f"c{i}"),
                )
                for i in range(count)
            )
        )
    )


@functools.cache
def insert_statement(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT (org_id, sending_facility, control_id) DO NOTHING
    RETURNING id, uid`` for ``dialect`` (SQLite 3.35 and later; PostgreSQL uses
    :func:`_pg_unnest_insert`), one ``VALUES`` row per message."""
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    c = hl7_messages.c
    return (
        make(hl7_messages)
        .on_conflict_do_nothing(index_elements=[c.org_id, c.sending_facility, c.control_id])
        .returning(c.id, c.uid)
    )


#: The columns a new row sets, with their PostgreSQL array types (for ``unnest``).
_PG_ARRAYS = [
    (c.name, "timestamptz[]" if isinstance(c.type, UTCDateTime) else f"{pg}[]")
    for c in hl7_messages.c
    if c.name not in ("id", "resources")
    for pg in [{"LargeBinary": "bytea", "Integer": "integer"}.get(type(c.type).__name__, "text")]
]


@functools.cache
def _pg_unnest_insert() -> TextClause:
    """PostgreSQL: the batch as one array per column, ``INSERT … SELECT FROM
    unnest(…) ON CONFLICT DO NOTHING RETURNING id, uid``.

    The statement's text is the same for any number of rows (26 parameters),
    so psycopg parses it once and caches it; a multi-row ``VALUES`` list
    (SQLAlchemy's insertmanyvalues) is a new, long text per batch size, which
    psycopg re-parses with a regular expression on every execution (a fifth
    of the listener's GIL time in a py-spy profile of the benchmark).
    """
    names = ", ".join(name for name, _ in _PG_ARRAYS)
    arrays = ", ".join(f"CAST(:{name} AS {kind})" for name, kind in _PG_ARRAYS)
    # Names and types come from the table definition, never from input.
    return text(
        f"INSERT INTO hl7_messages ({names}) SELECT * FROM unnest({arrays}) "  # noqa: S608
        "ON CONFLICT (org_id, sending_facility, control_id) DO NOTHING RETURNING id, uid"
    )


def _fresh(
    items: Sequence[NewMessage], values: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], set[int]]:
    """The rows to insert, and the positions of messages that repeat an earlier
    message of the same batch (they are its duplicates)."""
    fresh: list[dict[str, Any]] = []
    repeats: set[int] = set()
    seen: set[Key] = set()
    for index, (item, value) in enumerate(zip(items, values, strict=True)):
        if _keyed(item):
            key = _key(value)
            if key in seen:
                repeats.add(index)
                continue
            seen.add(key)
        fresh.append(value)
    return fresh, repeats


class MessageStore:
    def __init__(self, db: Database, sealer: ValueSealer | None) -> None:
        self.db = db
        self.sealer = sealer

    def _seal(self, uid: str, raw: bytes) -> bytes:
        if self.sealer is None:
            return raw
        return self.sealer.seal(raw, f"hl7:{uid}".encode())

    def body(self, row: RowMapping) -> bytes:
        """The raw message of a row, opened."""
        sealed = bytes(row["body"])
        if self.sealer is not None and sealed.startswith(ValueSealer.MAGIC):
            return self.sealer.open(sealed, f"hl7:{row['uid']}".encode())
        return sealed

    def _values(self, item: NewMessage) -> dict[str, Any]:
        now = utcnow()
        uid = str(uuid.uuid4())
        return {
            "uid": uid,
            "received_at": now,
            "updated_at": now,
            "source": item.source,
            "peer": _clip(item.peer, 64),
            "org_id": item.org_id,
            "client_id": item.client_id,
            "sending_application": _clip(item.sending_application, 227),
            "sending_facility": _clip(item.sending_facility, 227) or "",
            "control_id": _clip(item.control_id, 199),
            "message_type": _clip(item.message_type, 20),
            "version": _clip(item.version, 10),
            "processing_id": _clip(item.processing_id, 3),
            "charset": _clip(item.charset, 40),
            "ack_mode": item.ack_mode,
            "size": len(item.raw),
            "sha256": hashlib.sha256(item.raw).hexdigest(),
            "body": self._seal(uid, item.raw),
            "state": item.state,
            "ack_code": item.ack_code,
            "error_code": item.error_code,
            "error_location": _clip(item.error_location, 40),
            "error": _clip(item.error, 500),
            "resources": None,
            "attempts": 0,
        }

    def record(self, item: NewMessage) -> tuple[Row, bool]:
        """Commit one received message; returns (row, duplicate) (see :meth:`record_many`)."""
        [result] = self.record_many([item])
        return result

    def record_many(self, items: Sequence[NewMessage]) -> list[tuple[Row, bool]]:
        """Commit messages that arrived together in one transaction (group commit);
        returns (row, duplicate) for each, in order.

        With a known sender and MSH-10, an earlier row with the same
        organization, facility and control id is returned instead (and
        ``duplicate`` is True); nothing new is written for it. Rows are
        sealed before the transaction starts, so it holds the write lock
        only for the insert.

        One statement does it: ``INSERT … ON CONFLICT (org_id,
        sending_facility, control_id) DO NOTHING RETURNING id, uid``; a row
        that did not come back met a stored key, and only then are the
        originals read. On PostgreSQL that statement (one array per column,
        :func:`_pg_unnest_insert`, so the batch stays atomic at any size)
        runs on its own, in autocommit mode: one round trip, committed
        (``synchronous_commit``) before its answer, where ``BEGIN``, a
        duplicate query, the insert and ``COMMIT`` took four. A key that a
        concurrent transaction inserted and has not committed makes
        PostgreSQL wait for that commit, then skip the row, so the original
        is always committed when it is read.
        """
        values = [self._values(item) for item in items]
        for _ in range(_BATCH_TRIES):
            try:
                return self._record(items, values)
            except (IntegrityError, OperationalError) as exc:
                if not _retryable(exc) or not any(_keyed(item) for item in items):
                    raise
                # PostgreSQL broke a deadlock (two batches in flight inserting the same
                # keys in crossed order): again; the keys committed meanwhile come back
                # as duplicates.
                for value in values:
                    value.pop("id", None)
        # Still conflicting (a stream of racing resends): one by one.
        out: list[tuple[Row, bool]] = []
        for item, value in zip(items, values, strict=True):
            for _ in range(_BATCH_TRIES):
                try:
                    out += self._record([item], [value])
                    break
                except (IntegrityError, OperationalError) as exc:
                    if not _retryable(exc) or not _keyed(item):
                        raise
                    value.pop("id", None)
            else:  # pragma: no cover - the unique key guarantees a row to read
                raise NotFound("The message store lost a duplicate.")
        return out

    def _record(
        self, items: Sequence[NewMessage], values: Sequence[dict[str, Any]]
    ) -> list[tuple[Row, bool]]:
        """One attempt: the insert committed, then the originals of the duplicates read."""
        fresh, batch_duplicates = _fresh(items, values)
        if self.db.is_sqlite:
            # BEGIN and COMMIT cost no round trip there, and the writer lock is held
            # by the transaction (SQLAlchemy may split a long insert into pages, which
            # the transaction keeps atomic).
            with self.db.write() as conn:
                inserted = self._insert(conn, fresh)
                return self._rows(conn, items, values, inserted, batch_duplicates)
        with self.db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            inserted = self._insert(conn, fresh)
            return self._rows(conn, items, values, inserted, batch_duplicates)

    def _insert(self, conn: Connection, fresh: Sequence[dict[str, Any]]) -> set[str]:
        """Insert ``fresh`` rows but those whose key is stored; the uids inserted."""
        if not fresh:
            return set()
        by_uid = {value["uid"]: value for value in fresh}
        inserted: set[str] = set()
        if self.db.is_sqlite:
            result = conn.execute(insert_statement(self.db.dialect), fresh)
        else:
            arrays = {name: [value[name] for value in fresh] for name, _ in _PG_ARRAYS}
            result = conn.execute(_pg_unnest_insert(), arrays)
        for new_id, uid in result:
            by_uid[uid]["id"] = int(new_id)
            inserted.add(uid)
        return inserted

    def _rows(
        self,
        conn: Connection,
        items: Sequence[NewMessage],
        values: Sequence[dict[str, Any]],
        inserted: set[str],
        batch_duplicates: set[int],
    ) -> list[tuple[Row, bool]]:
        """(row, duplicate) per message: its own values when inserted, else the original."""
        missing: list[Key] = []
        for index, (item, value) in enumerate(zip(items, values, strict=True)):
            if index in batch_duplicates or value["uid"] in inserted:
                continue
            if not _keyed(item):  # only a keyed row can meet a stored key
                raise IntegrityError("INSERT hl7_messages", None, Exception("not inserted"))
            missing.append(_key(value))
        existing = self._by_keys(conn, missing) if missing else {}
        rows: list[tuple[Row, bool]] = []
        by_key: dict[Key, Row] = {}
        for index, (item, value) in enumerate(zip(items, values, strict=True)):
            key = _key(value)
            if index in batch_duplicates:
                rows.append((by_key[key], True))
            elif value["uid"] in inserted:
                row = dict(value)
                if _keyed(item):
                    by_key[key] = row
                rows.append((row, False))
            else:
                original = existing.get(key)
                if original is None:  # a conflict with no row: retried by record_many
                    raise IntegrityError("INSERT hl7_messages", None, Exception("no original"))
                by_key[key] = original
                rows.append((original, True))
        return rows

    def _by_keys(self, conn: Connection, keys: Sequence[Key]) -> dict[Key, RowMapping]:
        """Stored rows with these (organization, facility, MSH-10) keys: one query
        per :data:`_KEYS_PER_QUERY` keys."""
        unique = list(dict.fromkeys(keys))
        found: dict[Key, RowMapping] = {}
        for start in range(0, len(unique), _KEYS_PER_QUERY):
            chunk = unique[start : start + _KEYS_PER_QUERY]
            params: dict[str, Any] = {}
            for i, (org, facility, control) in enumerate(chunk):
                params[f"o{i}"], params[f"f{i}"], params[f"c{i}"] = org, facility, control
            for r in conn.execute(keys_statement(len(chunk)), params).mappings():
                found[(r["org_id"], r["sending_facility"], r["control_id"])] = r
        return found

    def _get(self, conn: Connection, message_id: int, lock: bool = False) -> RowMapping:
        query = select(hl7_messages).where(hl7_messages.c.id == message_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound("No such HL7 message.")
        return row

    def get(self, message_id: int) -> RowMapping:
        with self.db.read() as conn:
            return self._get(conn, message_id)

    def get_many(self, message_ids: Sequence[int]) -> dict[int, RowMapping]:
        """Rows by id (one read); ids that do not exist are left out."""
        if not message_ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                select(hl7_messages).where(hl7_messages.c.id.in_(list(message_ids)))
            ).mappings()
            return {int(r["id"]): r for r in rows}

    def by_uid(self, uid: str) -> RowMapping:
        with self.db.read() as conn:
            row = conn.execute(select(hl7_messages).where(hl7_messages.c.uid == uid)).mappings()
            found = row.first()
        if found is None:
            raise NotFound("No such HL7 message.")
        return found

    def lock(self, conn: Connection, message_id: int) -> RowMapping:
        return self._get(conn, message_id, lock=True)

    def set_outcome(
        self,
        conn: Connection,
        message_id: int,
        *,
        state: str,
        ack_code: str | None,
        error_code: str | None = None,
        error_location: str | None = None,
        error: str | None = None,
        resources: Sequence[str] | None = None,
        attempt: bool = True,
        only_states: Sequence[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        query = update(hl7_messages).where(hl7_messages.c.id == message_id)
        if only_states is not None:
            query = query.where(hl7_messages.c.state.in_(list(only_states)))
        values: dict[str, Any] = {
            "state": state,
            "ack_code": ack_code,
            "error_code": error_code,
            "error_location": _clip(error_location, 40),
            "error": _clip(error, 500),
            "updated_at": utcnow(),
            **(extra or {}),
        }
        if resources is not None:
            values["resources"] = list(resources)
        if attempt:
            values["attempts"] = hl7_messages.c.attempts + 1
        return bool(conn.execute(query.values(**values)).rowcount)

    def pending(
        self, limit: int = 100, before: datetime | None = None, before_id: int | None = None
    ) -> list[int]:
        """Ids of messages committed but not applied yet, oldest first."""
        query = select(hl7_messages.c.id).where(hl7_messages.c.state == "received")
        if before is not None:
            query = query.where(hl7_messages.c.received_at < before)
        if before_id is not None:
            query = query.where(hl7_messages.c.id < before_id)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(hl7_messages.c.id).limit(limit)).scalars()
            return [int(i) for i in rows]

    def list(
        self,
        *,
        org_id: str | None = None,
        state: str | None = None,
        message_type: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        query = select(*SUMMARY)
        if org_id is not None:
            query = query.where(hl7_messages.c.org_id == org_id)
        if state is not None:
            query = query.where(hl7_messages.c.state == state)
        if message_type is not None:
            query = query.where(hl7_messages.c.message_type == message_type)
        if before_id is not None:
            query = query.where(hl7_messages.c.id < before_id)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(hl7_messages.c.id.desc()).limit(limit))
            return [dict(r) for r in rows.mappings()]

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(hl7_messages.c.state, func.count()).group_by(hl7_messages.c.state)
            )
            return {str(state): int(n) for state, n in rows}

    def rewrap(self, progress: Callable[[int], None] | None = None) -> RewrapReport:
        """Re-wrap every message's data key under the active master key (key rotation)."""
        scanned = rewrapped = 0
        if self.sealer is None:
            return RewrapReport(0, 0)
        last = 0
        while True:
            with self.db.read() as conn:
                rows = (
                    conn.execute(
                        select(hl7_messages.c.id, hl7_messages.c.uid, hl7_messages.c.body)
                        .where(hl7_messages.c.id > last)
                        .order_by(hl7_messages.c.id)
                        .limit(500)
                    )
                    .mappings()
                    .all()
                )
            if not rows:
                return RewrapReport(scanned, rewrapped)
            changed = []
            for row in rows:
                last = int(row["id"])
                sealed = bytes(row["body"])
                if sealed.startswith(ValueSealer.MAGIC):
                    new = self.sealer.rewrap(sealed, f"hl7:{row['uid']}".encode())
                    if new is not None:
                        changed.append((last, new))
            with self.db.write() as conn:
                for message_id, body in changed:
                    conn.execute(
                        update(hl7_messages)
                        .where(hl7_messages.c.id == message_id)
                        .values(body=body)
                    )
            scanned += len(rows)
            rewrapped += len(changed)
            if progress is not None:
                progress(len(rows))
