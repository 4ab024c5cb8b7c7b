"""``copy_insert`` stores exactly what an ordinary insert stores, on both
backends: on PostgreSQL through ``COPY``, binary for tables of built-in
non-numeric types (bodies, timestamps, small integers, booleans, texts) and
text for tables with ``numeric`` columns; on SQLite as an insert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, insert, select

from salus.db import Database, bulkcopy
from salus.db.bulkcopy import COPY_MIN_ROWS, copy_insert
from salus.db.tables import fhir_history, fhir_idx_date, fhir_idx_quantity

START = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)
TEXTS = ["", "plain", "tab\there", "new\nline", "back\\slash", "Nguyễn 김 🙂", "\\N", "quote\"'"]


def _history(count: int, offset: int) -> list[dict[str, Any]]:
    return [
        {
            "rid": offset + i,
            "version": 1 + i % 3,
            "res_type": "Patient",
            "res_id": f"p-{offset + i}",
            "org_id": "hosp-a",
            "patient_key": None if i % 4 == 0 else TEXTS[i % len(TEXTS)],
            "category": "clinical",
            "deleted": i % 5 == 0,
            "method": "POST",
            "last_updated": START + timedelta(microseconds=i, days=i),
            "body": None if i % 5 == 0 else bytes(range(256)) * (i % 3) + b"\x00\\\n\t",
        }
        for i in range(count)
    ]


def _dates(count: int, offset: int) -> list[dict[str, Any]]:
    return [
        {
            "param": "birthdate",
            "low": START - timedelta(days=400 * i),
            "high": START + timedelta(seconds=i),
            "shape": i % 4,
            "rid": offset + i,
            "res_type": "Patient",
        }
        for i in range(count)
    ]


def _quantities(count: int, offset: int) -> list[dict[str, Any]]:
    return [
        {
            "param": "value-quantity",
            "system": None if i % 3 == 0 else "http://unitsofmeasure.org",
            "code": TEXTS[i % len(TEXTS)],
            "low": Decimal("-99999.125") + i,
            "high": Decimal("0.25") * i,
            "rid": offset + i,
            "res_type": "Observation",
        }
        for i in range(count)
    ]


def _stored(db: Database, table: Table, rids: range) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(
            select(table).where(table.c.rid.in_(list(rids))).order_by(table.c.rid)
        ).mappings()
        return [
            {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in r.items()} for r in rows
        ]


def test_copy_stores_what_an_insert_stores(db: Database) -> None:
    count = COPY_MIN_ROWS * 3
    for table, make in (
        (fhir_history, _history),
        (fhir_idx_date, _dates),
        (fhir_idx_quantity, _quantities),
    ):
        copied, inserted = make(count, 1_000), make(count, 2_000)
        with db.write() as conn:
            copy_insert(conn, table, copied)
            conn.execute(insert(table), inserted)
        by_copy = _stored(db, table, range(1_000, 1_000 + count))
        by_insert = _stored(db, table, range(2_000, 2_000 + count))
        assert len(by_copy) == count
        for a, b in zip(by_copy, by_insert, strict=True):
            assert a["rid"] + 1_000 == b["rid"]
            if "res_id" in a:
                assert a["res_id"].replace("p-1", "p-2", 1) == b["res_id"]
            skip = {"rid", "res_id"}
            assert {k: v for k, v in a.items() if k not in skip} == {
                k: v for k, v in b.items() if k not in skip
            }, table.name
        original = {r["rid"]: r for r in copied}
        for row in by_copy:  # and what was given, exactly
            for key, value in original[row["rid"]].items():
                assert row[key] == value, (table.name, key)
    if db.engine.dialect.name == "postgresql":
        chosen = {name: oids is not None for (name, _), oids in bulkcopy._BINARY_TYPES.items()}
        assert chosen["fhir_history"] and chosen["fhir_idx_date"]
        assert chosen["fhir_idx_quantity"] is False  # numeric columns: text format
