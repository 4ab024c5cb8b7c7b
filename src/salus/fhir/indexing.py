"""Search index maintenance: one table per parameter type (FHIR search.html).

Index rows describe the *current* version only and are replaced in the same
transaction as the write (an update never leaves stale rows to match). The
values come from :func:`salus.fhir.search.extract.extract`, which evaluates
the official R4 SearchParameter expressions; this module only maps them to
rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete
from sqlalchemy.engine import Connection

from salus.db.bulkcopy import copy_insert
from salus.db.tables import (
    fhir_idx_composite,
    fhir_idx_date,
    fhir_idx_number,
    fhir_idx_quantity,
    fhir_idx_reference,
    fhir_idx_string,
    fhir_idx_token,
    fhir_idx_uri,
)

__all__ = ["DATE_LONG", "DATE_MULTI", "DATE_SHORT_SPAN", "INDEX_TABLES", "Indexer"]

INDEX_TABLES: tuple[Table, ...] = (
    fhir_idx_composite,
    fhir_idx_token,
    fhir_idx_string,
    fhir_idx_date,
    fhir_idx_number,
    fhir_idx_quantity,
    fhir_idx_reference,
    fhir_idx_uri,
)
#: ``fhir_idx_date.shape`` bits: the resource has several values of the parameter
#: (FHIR search.html: ANDed conditions may then match different values), and the
#: value spans more than :data:`DATE_SHORT_SPAN` (a range search finds the short
#: ones that begin before its start within that span of it).
DATE_MULTI = 1
DATE_LONG = 2
DATE_SHORT_SPAN = timedelta(days=1)
_DELETES = [delete(table).where(table.c.rid == bindparam("rid_")) for table in INDEX_TABLES]
_TEXT = 255
_URL = 1024

Extractor = Callable[[Mapping[str, Any]], Sequence[Any]]


def _cut(value: Any, limit: int = _TEXT) -> str | None:
    if value is None:
        return None
    if type(value) is str and len(value) <= limit:
        return value
    text = str(value)
    return text[:limit]


Row = tuple[Table, dict[str, Any]]


# One function per value class (by class name, as the extractor may be
# another one). The rows' keys, their order included, are what
# writerows.py's statements and the bulk COPY expect: the value columns,
# then ``rid`` and ``res_type`` (added by Indexer.rows).
def _token_row(value: Any) -> Row:
    return fhir_idx_token, {
        "param": value.param,
        "system": _cut(value.system),
        "code": _cut(value.code),
        "text": _cut(value.text),
        "type_system": _cut(value.type_system),
        "type_code": _cut(value.type_code),
    }


def _string_row(value: Any) -> Row:
    return fhir_idx_string, {
        "param": value.param,
        "norm": _cut(value.normalized) or "",
        "exact": _cut(value.exact) or "",
    }


def _date_row(value: Any) -> Row:
    return fhir_idx_date, {"param": value.param, "low": value.low, "high": value.high}


def _number_row(value: Any) -> Row:
    return fhir_idx_number, {"param": value.param, "low": value.low, "high": value.high}


def _quantity_row(value: Any) -> Row:
    return fhir_idx_quantity, {
        "param": value.param,
        "system": _cut(value.system),
        "code": _cut(value.code),
        "low": value.low,
        "high": value.high,
    }


def _reference_row(value: Any) -> Row:
    return fhir_idx_reference, {
        "param": value.param,
        "target_type": _cut(value.target_type, 64),
        "target_id": _cut(value.target_id, 64),
        "url": _cut(value.url, _URL),
    }


def _reference_identifier_row(value: Any) -> Row:
    # Reference.identifier, for the :identifier modifier (search.html#reference):
    # a token row under a parameter name of its own.
    return fhir_idx_token, {
        "param": f"{value.param}:identifier",
        "system": _cut(value.system),
        "code": _cut(value.code),
        "text": None,
        "type_system": None,
        "type_code": None,
    }


def _uri_row(value: Any) -> Row:
    return fhir_idx_uri, {"param": value.param, "value": _cut(value.value, _URL) or ""}


def _composite_row(value: Any) -> Row | None:
    """Two-component composites (the first a token or reference) as one row."""
    if len(value.parts) != 2:
        return None  # three-part composites (4 of 72 in R4) are not indexed yet
    first, second = value.parts
    row: dict[str, Any] = {
        "param": value.param,
        "k_system": None,
        "k_code": None,
        "v_system": None,
        "v_code": None,
        "v_low": None,
        "v_high": None,
        "v_date_low": None,
        "v_date_high": None,
        "v_text": None,
    }
    first_kind, second_kind = type(first).__name__, type(second).__name__
    if first_kind == "TokenValue":
        row.update(k_system=_cut(first.system), k_code=_cut(first.code))
    elif first_kind == "ReferenceValue":
        row.update(k_system=_cut(first.target_type), k_code=_cut(first.target_id))
    else:
        return None
    if second_kind == "TokenValue":
        row.update(v_system=_cut(second.system), v_code=_cut(second.code))
    elif second_kind in ("QuantityValue", "NumberValue"):
        row.update(v_low=second.low, v_high=second.high)
        if second_kind == "QuantityValue":
            row.update(v_system=_cut(second.system), v_code=_cut(second.code))
    elif second_kind == "DateValue":
        row.update(v_date_low=second.low, v_date_high=second.high)
    elif second_kind == "StringValue":
        row.update(v_text=_cut(second.normalized))
    else:
        return None
    return fhir_idx_composite, row


#: The row function of each value class (by class name); a class not here
#: has no index row.
_ROWS: dict[str, Callable[[Any], Row | None]] = {
    "TokenValue": _token_row,
    "StringValue": _string_row,
    "DateValue": _date_row,
    "NumberValue": _number_row,
    "QuantityValue": _quantity_row,
    "ReferenceValue": _reference_row,
    "ReferenceIdentifierValue": _reference_identifier_row,
    "UriValue": _uri_row,
    "CompositeValue": _composite_row,
}


def _date_shapes(rows: list[dict[str, Any]]) -> None:
    """Set ``shape`` on a resource's date rows (:data:`DATE_MULTI`, :data:`DATE_LONG`)."""
    per_param: dict[str, int] = {}
    for row in rows:
        per_param[row["param"]] = per_param.get(row["param"], 0) + 1
    for row in rows:
        shape = DATE_MULTI if per_param[row["param"]] > 1 else 0
        if row["high"] - row["low"] > DATE_SHORT_SPAN:
            shape |= DATE_LONG
        row["shape"] = shape


class Indexer:
    def __init__(self, extract: Extractor | None = None) -> None:
        if extract is None:
            from salus.fhir.search.extract import extract as default_extract

            extract = default_extract
        self.extract = extract

    def rows(
        self,
        rid: int,
        res_type: str,
        resource: Mapping[str, Any],
        extracted: Sequence[Any] | None = None,
    ) -> dict[Table, list[dict[str, Any]]]:
        """The index rows of ``resource``; ``extracted``: its :attr:`extract`
        result when the caller has it already (the same rows)."""
        grouped: dict[Table, list[dict[str, Any]]] = {}
        seen: set[tuple[Any, ...]] = set()
        rows_of = _ROWS.get
        for value in self.extract(resource) if extracted is None else extracted:
            make = rows_of(type(value).__name__)
            mapped = make(value) if make is not None else None
            if mapped is None:
                continue
            table, values = mapped
            key = (table.name, *values.values())
            if key in seen:  # the same value reached by two paths is one row
                continue
            seen.add(key)
            values["rid"] = rid
            values["res_type"] = res_type
            found = grouped.get(table)
            if found is None:
                grouped[table] = [values]
            else:
                found.append(values)
        dates = grouped.get(fhir_idx_date)
        if dates:
            _date_shapes(dates)
        return grouped

    def replace(
        self,
        conn: Connection,
        rid: int,
        res_type: str,
        resource: Mapping[str, Any],
        *,
        fresh: bool = False,
    ) -> None:
        """Index the resource's current version (``fresh``: it has no rows yet)."""
        if not fresh:
            self.clear(conn, rid)
        self.insert_rows(conn, self.rows(rid, res_type, resource))

    @staticmethod
    def insert_rows(conn: Connection, grouped: Mapping[Table, list[dict[str, Any]]]) -> None:
        """Insert index rows made by :meth:`rows` (one statement per table)."""
        for table, rows in grouped.items():
            copy_insert(conn, table, rows)

    def clear(self, conn: Connection, rid: int) -> None:
        for statement in _DELETES:
            conn.execute(statement, {"rid_": rid})
