"""Stored ViewDefinitions (the ``warehouse_views`` table).

ViewDefinition is a SQL-on-FHIR logical model, not an R4 resource type: the
R4 store would refuse it, and a ``Basic`` wrapper would hide it from every
SQL-on-FHIR client. Salus keeps ViewDefinitions in their own table and
serves them at ``/fhir/ViewDefinition`` (create, read, update, delete, list)
as the JSON the specification defines, with ``id`` and ``meta``. Each one
must carry a ``name`` (the table name of its materialized view, unique) and
be valid (:func:`~salus.warehouse.sqlonfhir.compile_view`) before it is
stored. Only principals allowed to use the warehouse may define views
(:mod:`salus.warehouse.access`); definitions hold no patient data.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import RowMapping

from salus.db import Database
from salus.db.tables_warehouse import warehouse_views
from salus.db.types import utcnow
from salus.errors import Conflict, InvalidInput, NotFound
from salus.fhir.search.resource_types import RESOURCE_TYPES
from salus.fhir.store import check_id
from salus.security.principal import Principal
from salus.warehouse.sqlonfhir import View, compile_view

__all__ = ["StoredView", "ViewCatalog", "compile_definition"]

V = warehouse_views


def compile_definition(definition: Any) -> View:
    """Validate a ViewDefinition body (``resourceType`` may be given) and compile it."""
    if isinstance(definition, Mapping):
        kind = definition.get("resourceType")
        if kind is not None and kind != "ViewDefinition":
            raise InvalidInput("Expected a ViewDefinition.", expression=["resourceType"])
    return compile_view(definition, resource_types=RESOURCE_TYPES)


@dataclass(frozen=True, slots=True)
class StoredView:
    id: str
    name: str
    resource_type: str
    definition: dict[str, Any]
    version: int
    owner_org: str
    updated_at: datetime
    generation: int
    manifest: dict[str, Any] | None
    watermark_updated: datetime | None
    watermark_rid: int | None
    row_count: int
    materialized_at: datetime | None
    definition_version: int | None

    @classmethod
    def from_row(cls, row: RowMapping) -> StoredView:
        return cls(
            id=row["id"],
            name=row["name"],
            resource_type=row["resource_type"],
            definition=dict(row["definition"]),
            version=int(row["version"]),
            owner_org=row["owner_org"],
            updated_at=row["updated_at"],
            generation=int(row["generation"]),
            manifest=row["manifest"],
            watermark_updated=row["watermark_updated"],
            watermark_rid=row["watermark_rid"],
            row_count=int(row["row_count"]),
            materialized_at=row["materialized_at"],
            definition_version=row["definition_version"],
        )

    def compiled(self) -> View:
        return compile_definition(self.definition)

    def parts(self) -> list[dict[str, Any]]:
        return list((self.manifest or {}).get("parts", []))

    def resource(self) -> dict[str, Any]:
        """The ViewDefinition as served at ``/fhir/ViewDefinition/{id}``."""
        body = {"resourceType": "ViewDefinition", **self.definition, "id": self.id}
        body["meta"] = {
            "versionId": str(self.version),
            "lastUpdated": self.updated_at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
        }
        return body


class ViewCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, view_id: str) -> StoredView:
        with self.db.read() as conn:
            row = conn.execute(select(V).where(V.c.id == view_id)).mappings().first()
        if row is None:
            raise NotFound("No such ViewDefinition.")
        return StoredView.from_row(row)

    def by_name(self, name: str) -> StoredView:
        with self.db.read() as conn:
            row = conn.execute(select(V).where(V.c.name == name)).mappings().first()
        if row is None:
            raise NotFound("No such view.")
        return StoredView.from_row(row)

    def list(self) -> list[StoredView]:
        with self.db.read() as conn:
            rows = conn.execute(select(V).order_by(V.c.name)).mappings().all()
        return [StoredView.from_row(row) for row in rows]

    def save(
        self, principal: Principal, definition: Mapping[str, Any], view_id: str | None = None
    ) -> tuple[StoredView, bool]:
        """Create (no id, or an unknown one) or update; returns the view and whether it is new."""
        view = compile_definition(definition)
        if view.name is None:
            raise InvalidInput("A stored ViewDefinition needs a name.", expression=["name"])
        body = {k: v for k, v in definition.items() if k not in ("id", "meta", "resourceType")}
        now = utcnow()
        with self.db.write() as conn:
            current = None
            if view_id is not None:
                check_id(view_id)
                current = conn.execute(select(V).where(V.c.id == view_id)).mappings().first()
            clash = conn.execute(select(V.c.id).where(V.c.name == view.name)).first()
            if clash is not None and (current is None or clash.id != current["id"]):
                raise Conflict("Another ViewDefinition has this name.", expression=["name"])
            if current is None:
                new_id = view_id or str(uuid.uuid4())
                conn.execute(
                    insert(V).values(
                        id=new_id,
                        name=view.name,
                        resource_type=view.resource,
                        definition=body,
                        version=1,
                        owner_org=principal.org_id,
                        created_at=now,
                        updated_at=now,
                        generation=0,
                        row_count=0,
                    )
                )
            else:
                new_id = str(current["id"])
                conn.execute(
                    update(V)
                    .where(V.c.id == new_id)
                    .values(
                        name=view.name,
                        resource_type=view.resource,
                        definition=body,
                        version=V.c.version + 1,
                        updated_at=now,
                    )
                )
        return self.get(new_id), current is None

    def delete(self, view_id: str) -> StoredView:
        stored = self.get(view_id)
        with self.db.write() as conn:
            conn.execute(delete(V).where(V.c.id == view_id))
        return stored
