"""FHIR resources in the database: sealed, versioned, indexed, filtered.

The store knows no HTTP (medplum's repository and HAPI's DAO layer play this
part). Writes run inside the caller's transaction, so a transaction Bundle is
one database transaction: the new version, its history row, its search index
rows and its audit event commit together or not at all. Reads take the
policy engine's :class:`~salus.security.policy.RecordFilter` and apply it in
the SQL, never to results afterwards.

Each version's body is sealed with its own data key for the context
``fhir:<type>/<id>/<version>`` (:class:`~salus.storage.envelope.ValueSealer`),
so a body copied onto another version or resource does not open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Dialect, RowMapping

from salus import jsoncodec
from salus.audit.chain import AuditLog
from salus.audit.sqliteappend import prepare_events
from salus.db.bulkcopy import COPY_MIN_ROWS, copy_insert, next_ids
from salus.db.engine import Database
from salus.db.keys import pairs_in
from salus.db.tables import fhir_history, fhir_resources
from salus.db.types import utcnow
from salus.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from salus.fhir.categories import category_of
from salus.fhir.indexing import Indexer
from salus.fhir.prepare import (
    PreparedCreates,
    created,
    json_bytes,
    merge_prepared,
    prepare_creates,
    split_created,
    type_of,
    write_event,
)
from salus.fhir.storereads import (
    HISTORY_COLUMNS,
    RESOURCE_COLUMNS,
    Stored,
    StoreReads,
    check_id,
    new_id,
)
from salus.fhir.updates import CURRENT, plan_update, write_planned
from salus.fhir.writegate import GATE
from salus.fhir.writerows import (
    encode_creates,
    insert_encoded,
)
from salus.security.principal import Principal, PrincipalKind
from salus.storage.envelope import ValueSealer

__all__ = [
    "HISTORY_COLUMNS",
    "RESOURCE_COLUMNS",
    "FhirStore",
    "Stored",
    "check_id",
    "new_id",
]

_INSERT_RESOURCE = insert(fhir_resources)
_UPDATE_RESOURCE = update(fhir_resources).where(fhir_resources.c.rid == bindparam("rid_"))
_INSERT_RESOURCE_RIDS = _INSERT_RESOURCE.returning(
    fhir_resources.c.rid, sort_by_parameter_order=True
)
_INSERT_HISTORY = insert(fhir_history)

Validator = Callable[[Mapping[str, Any]], None]


class Compartment(Protocol):
    """The Patient a resource belongs to; ``values``: the resource's index
    values if at hand (:func:`salus.fhir.search.extract.patient_compartment`)."""

    def __call__(self, resource: Mapping[str, Any], values: Any = None, /) -> str | None: ...


def _no_compartment(_resource: Mapping[str, Any], _values: Any = None, /) -> None:
    return None


class FhirStore(StoreReads):
    def __init__(
        self,
        sealer: ValueSealer | None,
        audit: AuditLog,
        indexer: Indexer,
        *,
        validator: Validator | None = None,
        compartment: Compartment | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sealer = sealer
        self.audit = audit
        self.indexer = indexer
        self.validator = validator
        self.compartment = compartment or _no_compartment
        self.clock = clock
        #: The group commit of SQLite transaction Bundles of this store
        #: (:mod:`salus.fhir.bundle`), made on first use.
        self.bundle_group: Any = None

    # -- bodies ------------------------------------------------------------------------
    def _seal(self, res_type: str, res_id: str, version: int, resource: Mapping[str, Any]) -> bytes:
        return self._seal_raw(res_type, res_id, version, json_bytes(resource))

    def _seal_raw(self, res_type: str, res_id: str, version: int, raw: bytes) -> bytes:
        if self.sealer is None:
            return raw
        return self.sealer.seal(raw, f"fhir:{res_type}/{res_id}/{version}".encode())

    def _open(self, res_type: str, res_id: str, version: int, body: bytes) -> dict[str, Any]:
        loaded: dict[str, Any] = jsoncodec.loads(self._open_raw(res_type, res_id, version, body))
        return loaded

    def _open_raw(self, res_type: str, res_id: str, version: int, body: bytes) -> bytes:
        raw = bytes(body)
        if self.sealer is not None and raw.startswith(ValueSealer.MAGIC):
            raw = self.sealer.open(raw, f"fhir:{res_type}/{res_id}/{version}".encode())
        return raw

    def stored_from_row(self, row: RowMapping) -> Stored:
        """A resource row (``fhir_resources`` or ``fhir_history``), its body opened."""
        return self._stored(row)

    def _stored(
        self, row: Mapping[Any, Any], with_body: bool = True, *, keep_raw: bool = False
    ) -> Stored:
        body = row.get("body")
        raw = (
            self._open_raw(row["res_type"], row["res_id"], row["version"], body)
            if with_body and body is not None and not row["deleted"]
            else None
        )
        resource: dict[str, Any] | None = jsoncodec.loads(raw) if raw is not None else None
        return Stored(
            str(row["res_type"]),
            str(row["res_id"]),
            int(row["version"]),
            row["last_updated"],
            bool(row["deleted"]),
            str(row["org_id"]),
            resource,
            row["patient_key"],
            raw if keep_raw else None,
        )

    # -- writes ------------------------------------------------------------------------
    def _prepare(
        self, resource: Mapping[str, Any], res_type: str, res_id: str, version: int, now: datetime
    ) -> dict[str, Any]:
        body = dict(resource)
        body["id"] = res_id
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body["meta"] = meta
        if self.validator is not None:
            self.validator(body)
        return body

    def _write(
        self,
        conn: Connection,
        principal: Principal,
        res_type: str,
        res_id: str,
        version: int,
        body: dict[str, Any],
        method: str,
        now: datetime,
        rid: int | None,
        org_id: str,
    ) -> Stored:
        sealed = self._seal(res_type, res_id, version, body)
        patient_key = self.compartment(body)
        category = category_of(body)
        values = {
            "version": version,
            "org_id": org_id,
            "patient_key": patient_key,
            "category": category,
            "deleted": False,
            "last_updated": now,
            "body": sealed,
        }
        fresh = rid is None
        if rid is None:
            rid = int(
                conn.execute(
                    _INSERT_RESOURCE_RIDS, {"res_type": res_type, "res_id": res_id, **values}
                ).scalar_one()
            )
        else:
            conn.execute(_UPDATE_RESOURCE, {"rid_": rid, **values})
        conn.execute(
            _INSERT_HISTORY,
            {"rid": rid, "res_type": res_type, "res_id": res_id, "method": method, **values},
        )
        self.indexer.replace(conn, rid, res_type, body, fresh=fresh)
        self._audit(
            conn,
            principal,
            "C" if method == "POST" else "U",
            res_type,
            res_id,
            version,
            patient_key,
        )
        return Stored(res_type, res_id, version, now, False, org_id, body, patient_key)

    def _audit(
        self,
        conn: Connection,
        principal: Principal,
        action: str,
        res_type: str,
        res_id: str,
        version: int,
        patient_key: str | None,
    ) -> None:
        self.audit.append(
            conn, [write_event(principal, action, res_type, res_id, version, patient_key)]
        )

    def _current(
        self, conn: Connection, res_type: str, res_id: str, lock: bool = False
    ) -> RowMapping | None:
        query = select(fhir_resources).where(
            fhir_resources.c.res_type == res_type, fhir_resources.c.res_id == res_id
        )
        if lock:
            query = query.with_for_update()
        return conn.execute(query).mappings().first()

    @staticmethod
    def _owner_check(principal: Principal, row: RowMapping) -> None:
        if principal.kind is PrincipalKind.SYSTEM:
            return
        if row["org_id"] != principal.org_id:
            raise Forbidden("Records can only be changed by the organization that holds them.")

    def create(
        self,
        conn: Connection,
        principal: Principal,
        resource: Mapping[str, Any],
        *,
        res_id: str | None = None,
    ) -> Stored:
        """FHIR http.html#create: a new resource with a server-assigned id."""
        return self.create_many(conn, principal, [(resource, res_id)])[0]

    def create_many(
        self,
        conn: Connection,
        principal: Principal,
        items: Sequence[tuple[Mapping[str, Any], str | None]],
    ) -> list[Stored]:
        """Create several resources with a handful of statements (transaction
        Bundles, bulk import): one insert per table for the whole batch, and one
        audit append. ``items`` are (resource, id or None)."""
        return self.commit_creates(conn, self.prepare_creates(principal, items))

    def prepare_creates(
        self,
        principal: Principal,
        items: Sequence[tuple[Mapping[str, Any], str | None]],
        new_ids: bool = False,
    ) -> PreparedCreates:
        """The work of :meth:`create_many` that needs no database: validation,
        ids, ``meta``, sealing, index values and audit events. Done before the
        write transaction, it keeps that transaction (one writer at a time on
        SQLite) short. ``new_ids``: the given ids were just made by the server
        (:func:`new_id`), so they need no check against existing ones."""
        return prepare_creates(self, principal, items, new_ids)

    @staticmethod
    def encode(batch: PreparedCreates, dialect: Dialect) -> PreparedCreates:
        """Turn ``batch``'s rows into driver values now, outside any transaction,
        so that :meth:`commit_creates` only hands them to SQLite (its one writer
        waits for no Python work; :mod:`salus.fhir.writerows`). No effect on
        PostgreSQL. Returns ``batch``."""
        batch.encoded = encode_creates(dialect, batch.rows, batch.index_rows)
        if batch.encoded is not None:
            # The audit rows' chain-free part too (salus.audit.sqliteappend).
            batch.events = prepare_events(dialect, batch.events, GATE.checkpoint)
        return batch

    def commit_creates(self, conn: Connection, batch: PreparedCreates) -> list[Stored]:
        """Write what :meth:`prepare_creates` made, in the caller's transaction."""
        if not batch.rows:
            return []
        if batch.chosen_ids:
            existing = conn.execute(
                select(fhir_resources.c.res_type, fhir_resources.c.res_id).where(
                    pairs_in(fhir_resources.c.res_type, fhir_resources.c.res_id, batch.chosen_ids)
                )
            ).first()
            if existing is not None:
                raise Conflict("A resource with this id already exists.")
        if batch.encoded is not None and conn.dialect.name == "sqlite":
            insert_encoded(conn, batch.encoded)
            self.audit.append(conn, batch.events)
            return created(batch)
        if conn.dialect.name == "postgresql" and len(batch.rows) >= COPY_MIN_ROWS:
            rids = next_ids(conn, fhir_resources, "rid", len(batch.rows))
            copy_insert(
                conn,
                fhir_resources,
                [{**row, "rid": rid} for row, rid in zip(batch.rows, rids, strict=True)],
            )
        else:
            rows = batch.rows[0] if len(batch.rows) == 1 else batch.rows
            rids = [int(r) for r in conn.execute(_INSERT_RESOURCE_RIDS, rows).scalars()]
        history = [
            {**row, "rid": rid, "method": "POST"} for row, rid in zip(batch.rows, rids, strict=True)
        ]
        copy_insert(conn, fhir_history, history)
        grouped: dict[Table, list[dict[str, Any]]] = {}
        for rid, tables in zip(rids, batch.index_rows, strict=True):
            for table, values in tables.items():
                for value in values:
                    value["rid"] = rid
                grouped.setdefault(table, []).extend(values)
        self.indexer.insert_rows(conn, grouped)
        self.audit.append(conn, batch.events)
        return created(batch)

    def commit_create_groups(
        self, conn: Connection, batches: Sequence[PreparedCreates]
    ) -> list[list[Stored]]:
        """Several requests' :meth:`prepare_creates` written as one batch (one
        insert per table, one audit append) in the caller's transaction; the
        results split per request (:mod:`salus.fhir.groupcommit`)."""
        if len(batches) == 1:
            return [self.commit_creates(conn, batches[0])]
        return split_created(batches, self.commit_creates(conn, merge_prepared(batches)))

    def update(
        self,
        conn: Connection,
        principal: Principal,
        res_type: str,
        res_id: str,
        resource: Mapping[str, Any],
        *,
        if_match: int | None = None,
    ) -> tuple[Stored, bool]:
        """FHIR http.html#update (create-on-update when absent); returns (stored, created)."""
        check_id(res_id)
        if type_of(resource) != res_type:
            raise InvalidInput(
                "The resource type does not match the URL.", expression=["resourceType"]
            )
        if resource.get("id") != res_id:
            raise InvalidInput(
                "The resource id must match the id in the URL.", expression=[f"{res_type}.id"]
            )
        row = self._current(conn, res_type, res_id, lock=True)
        now = self.clock()
        if row is None:
            if if_match is not None:
                raise PreconditionFailed("The resource does not exist in that version.")
            body = self._prepare(resource, res_type, res_id, 1, now)
            return self._write(
                conn, principal, res_type, res_id, 1, body, "PUT", now, None, principal.org_id
            ), True
        self._owner_check(principal, row)
        if if_match is not None and if_match != row["version"]:
            raise PreconditionFailed(f"Version conflict: the current version is {row['version']}.")
        version = int(row["version"]) + 1
        body = self._prepare(resource, res_type, res_id, version, now)
        created = bool(row["deleted"])
        return self._write(
            conn,
            principal,
            res_type,
            res_id,
            version,
            body,
            "PUT",
            now,
            int(row["rid"]),
            str(row["org_id"]),
        ), created

    def update_in(
        self,
        db: Database,
        principal: Principal,
        res_type: str,
        res_id: str,
        resource: Mapping[str, Any],
        *,
        if_match: int | None = None,
    ) -> tuple[Stored, bool]:
        """:meth:`update` in a write transaction of its own, with the new
        version prepared before that transaction (:mod:`salus.fhir.updates`):
        inside it only the version check on the locked row and the writes."""
        check_id(res_id)
        current = db.fetch_one(CURRENT, {"_rt": res_type, "_rid": res_id})
        plan = None
        if (
            current is not None
            and not current["deleted"]
            and (principal.kind is PrincipalKind.SYSTEM or current["org_id"] == principal.org_id)
            and if_match in (None, current["version"])
            and type_of(resource) == res_type
            and resource.get("id") == res_id
        ):  # else the checks in their usual order, in the transaction (update)
            plan = plan_update(
                self, principal, res_type, res_id, resource, current, db.engine.dialect
            )
        with db.write() as conn:
            if plan is not None and write_planned(self, conn, principal, plan, if_match):
                values = plan.values
                return Stored(
                    res_type,
                    res_id,
                    plan.version,
                    plan.now,
                    False,
                    str(values["org_id"]),
                    plan.body,
                    values["patient_key"],
                ), False
            return self.update(conn, principal, res_type, res_id, resource, if_match=if_match)

    def delete(
        self,
        conn: Connection,
        principal: Principal,
        res_type: str,
        res_id: str,
        *,
        if_match: int | None = None,
    ) -> Stored | None:
        """FHIR http.html#delete: a new, deleted version; None if there was nothing."""
        row = self._current(conn, res_type, check_id(res_id), lock=True)
        if row is None or row["deleted"]:
            return None
        self._owner_check(principal, row)
        if if_match is not None and if_match != row["version"]:
            raise PreconditionFailed(f"Version conflict: the current version is {row['version']}.")
        now = self.clock()
        version = int(row["version"]) + 1
        values = {"version": version, "deleted": True, "last_updated": now}
        conn.execute(
            update(fhir_resources).where(fhir_resources.c.rid == row["rid"]).values(**values)
        )
        conn.execute(
            insert(fhir_history).values(
                rid=row["rid"],
                res_type=res_type,
                res_id=res_id,
                org_id=row["org_id"],
                patient_key=row["patient_key"],
                category=row["category"],
                method="DELETE",
                body=None,
                **values,
            )
        )
        self.indexer.clear(conn, int(row["rid"]))
        self._audit(conn, principal, "D", res_type, res_id, version, row["patient_key"])
        return Stored(
            res_type, res_id, version, now, True, str(row["org_id"]), None, row["patient_key"]
        )

    def purge(self, conn: Connection, res_type: str, res_id: str) -> None:
        """Physically remove a resource and its history (operators only, audited)."""
        row = self._current(conn, res_type, check_id(res_id), lock=True)
        if row is None:
            raise NotFound(f"{res_type}/{res_id} is not known.")
        self.indexer.clear(conn, int(row["rid"]))
        conn.execute(delete(fhir_history).where(fhir_history.c.rid == row["rid"]))
        conn.execute(delete(fhir_resources).where(fhir_resources.c.rid == row["rid"]))
