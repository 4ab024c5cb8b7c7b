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

from sqlalchemy import Select, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from salus.db.engine import Database
from salus.db.tables_hl7 import hl7_messages
from salus.db.types import utcnow
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
        only for the inserts.
        """
        values = [self._values(item) for item in items]
        for _ in range(_BATCH_TRIES):
            try:
                with self.db.write() as conn:
                    return self._insert(conn, items, values)
            except (IntegrityError, OperationalError) as exc:
                if not _retryable(exc) or not any(_keyed(item) for item in items):
                    raise
                # Another batch in flight (the group committer's next thread, another
                # process, an import) committed one of these keys between our duplicate
                # query and our insert; the unique index made us wait for its commit.
                # Again: the duplicate query now finds its row.
                for value in values:
                    value.pop("id", None)
        # Still conflicting (a stream of racing resends): one by one, reading theirs.
        out = []
        for item, value in zip(items, values, strict=True):
            for _ in range(_BATCH_TRIES):
                try:
                    with self.db.write() as conn:
                        out += self._insert(conn, [item], [value])
                    break
                except (IntegrityError, OperationalError) as exc:
                    if not _retryable(exc) or not _keyed(item):
                        raise
                    value.pop("id", None)
            else:  # pragma: no cover - the unique key guarantees a row to read
                raise NotFound("The message store lost a duplicate.")
        return out

    def _insert(
        self, conn: Connection, items: Sequence[NewMessage], values: Sequence[dict[str, Any]]
    ) -> list[tuple[Row, bool]]:
        out: list[tuple[Row | None, bool]] = []
        fresh: list[dict[str, Any]] = []
        seen: set[tuple[str | None, str, str | None]] = set()
        keyed = [_key(v) for i, v in zip(items, values, strict=True) if _keyed(i)]
        existing = self._by_keys(conn, keyed)
        for item, value in zip(items, values, strict=True):
            if _keyed(item):
                key = _key(value)
                if key in seen:  # the same message twice in one batch
                    out.append((None, True))
                    continue
                found = existing.get(key)
                if found is not None:
                    out.append((found, True))
                    continue
                seen.add(key)
            out.append((None, False))
            fresh.append(value)
        if fresh:
            ids = (
                conn.execute(
                    insert(hl7_messages).returning(hl7_messages.c.id, sort_by_parameter_order=True),
                    fresh,
                )
                .scalars()
                .all()
            )
            for value, new_id in zip(fresh, ids, strict=True):
                value["id"] = int(new_id)
        rows: list[tuple[Row, bool]] = []
        fresh_iter = iter(fresh)
        by_key: dict[Key, Row] = {}
        for (stored, duplicate), value in zip(out, values, strict=True):
            key = _key(value)
            row: Row
            if stored is not None:
                row = stored
            elif not duplicate:
                row = dict(next(fresh_iter))
                by_key[key] = row
            else:
                row = by_key[key]
            rows.append((row, duplicate))
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
