"""SQLite driver values made before the write lock (salus.fhir.writerows):
the timestamp columns' remembered bind processing gives exactly what
SQLAlchemy's own processor gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from salus.db.tables import fhir_history, fhir_idx_date, fhir_resources
from salus.fhir import writerows
from salus.fhir.writerows import _memo, encode_creates


def _processor() -> Any:
    dialect = sqlite_dialect()
    column = fhir_idx_date.c.low
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def test_memo_gives_the_processors_results() -> None:
    plain = _processor()
    remembered = _memo(plain)
    base = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    plus_seven = timezone(timedelta(hours=7))
    for value in [
        base,
        base,  # remembered
        base.astimezone(plus_seven),  # the same instant, another zone: equal, same text
        base + timedelta(microseconds=1),
        datetime(1, 1, 1, tzinfo=UTC),
        None,
    ]:
        assert remembered(value) == plain(value)
    assert remembered(base.astimezone(plus_seven)) == "2026-03-01 10:00:00.123456"


def test_memo_forgets_when_full(monkeypatch: Any) -> None:
    monkeypatch.setattr(writerows, "_MEMO_SIZE", 3)
    plain = _processor()
    remembered = _memo(plain)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    values = [start + timedelta(seconds=i) for i in range(10)]
    for value in values + values:
        assert remembered(value) == plain(value)


def test_encoded_rows_equal_sqlalchemy_processing() -> None:
    dialect = sqlite_dialect()
    now = datetime(2026, 5, 2, 8, 30, tzinfo=UTC)
    rows = [
        {
            "res_type": "Patient",
            "res_id": f"p{i}",
            "version": 1,
            "org_id": "hosp-a",
            "patient_key": f"p{i}",
            "category": None,
            "deleted": False,
            "last_updated": now,
            "body": b"{}",
        }
        for i in range(3)
    ]
    index = [
        {
            fhir_idx_date: [
                {
                    "param": "birthdate",
                    "low": now - timedelta(days=i),
                    "high": now,
                    "shape": 0,
                    "rid": 0,
                    "res_type": "Patient",
                }
            ]
        }
        for i in range(3)
    ]
    encoded = encode_creates(dialect, rows, index)
    assert encoded is not None
    by_table = {sql.split('"')[1]: values for sql, values in encoded.rows.items()}
    process = {
        name: table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        for table in (fhir_resources, fhir_history, fhir_idx_date)
        for name in ("last_updated", "low", "high")
        if name in table.c
    }
    for position, values in by_table["fhir_resources"]:
        assert values[7] == process["last_updated"](now)  # the rid is not among them
        assert position in (0, 1, 2)
    dates = by_table["fhir_idx_date"]
    assert [v[1] for _, v in dates] == [process["low"](now - timedelta(days=i)) for i in range(3)]
    assert [v[2] for _, v in dates] == [process["high"](now)] * 3
