"""The SQLite create path with rows encoded before the write lock
(salus.fhir.writerows, the audit events prepared by salus.audit.sqliteappend)
stores exactly what the general path (SQLAlchemy statements, as on
PostgreSQL) stores: every row of the resource, history, index and audit
tables, over every resource of the Synthea test bundles (synthetic,
Apache-2.0; tests/data/fhir/synthea), written as two groups of batches.
SQLite only: the encoded path does not exist on PostgreSQL."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from salus.audit.chain import AuditLog
from salus.audit.sqliteappend import PreparedEvents
from salus.db import Database
from salus.db.engine import create_database
from salus.db.migrate import migrate
from salus.db.tables import metadata
from salus.fhir.prepare import PreparedCreates
from salus.security.principal import Principal, PrincipalKind
from salus.services import build_fhir_store
from tests.fhirdata import rewrite_references

DATA = Path(__file__).resolve().parents[1] / "data" / "fhir" / "synthea"
NOW = datetime(2026, 11, 24, 1, 30, 0, 123456, tzinfo=UTC)
ALICE = Principal(PrincipalKind.USER, "alice", "hospital-a", address="10.0.0.7")


def _items() -> list[tuple[dict[str, Any], str | None]]:
    """Every resource with the id the server would give it (fixed here)."""
    out: list[tuple[dict[str, Any], str | None]] = []
    for path in sorted(DATA.glob("*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            bundle = json.load(handle)
        ids = {
            e["fullUrl"]: str(uuid.uuid5(uuid.NAMESPACE_URL, e["fullUrl"])) for e in bundle["entry"]
        }
        refs = {
            url: f"{e['resource']['resourceType']}/{ids[url]}"
            for url, e in ((e["fullUrl"], e) for e in bundle["entry"])
        }
        for entry in bundle["entry"]:
            resource = rewrite_references(entry["resource"], refs)
            resource.pop("id", None)
            out.append((resource, ids[entry["fullUrl"]]))
    return out


def _load(folder: Path, encoded: bool) -> Database:
    folder.mkdir()
    db = create_database(f"sqlite:///{folder / 'salus.db'}")
    migrate(db)
    audit = AuditLog(db, clock=lambda: NOW)
    store = build_fhir_store(None, audit)
    store.clock = lambda: NOW
    items = _items()
    half = len(items) // 2
    for group in ([items[:40], items[40:half]], [items[half:]]):
        batches: list[PreparedCreates] = []
        for part in group:
            batch = store.prepare_creates(ALICE, part, True)
            if encoded:
                store.encode(batch, db.engine.dialect)
                assert batch.encoded is not None and isinstance(batch.events, PreparedEvents)
            batches.append(batch)
        with db.write() as conn:
            store.commit_create_groups(conn, batches)
    return db


def _tables(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every FHIR and audit table's rows, each value with its SQLite type,
    in rowid order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with db.read() as conn:
        for table in metadata.sorted_tables:
            if not table.name.startswith(("fhir_", "audit_events", "audit_head")):
                continue
            probe = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.columns)
            sql = f'SELECT {probe} FROM "{table.name}" ORDER BY rowid'  # noqa: S608
            out[table.name] = [tuple(row) for row in conn.execute(text(sql))]
    return out


def test_encoded_path_stores_what_the_general_path_stores(tmp_path: Path) -> None:
    fast, general = _load(tmp_path / "fast", True), _load(tmp_path / "general", False)
    try:
        stored, expected = _tables(fast), _tables(general)
        assert stored == expected
        assert len(stored["fhir_resources"]) == len(_items()) > 100
        assert len(stored["audit_events"]) == len(_items())
        assert sum(len(stored[name]) for name in stored if name.startswith("fhir_idx_")) > 1000
    finally:
        fast.dispose()
        general.dispose()
