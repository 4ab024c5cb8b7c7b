"""Reading and validating a submission, row by row, before anything is written.

A submission is CSV (RFC 4180; UTF-8 with or without a byte order mark;
``,`` or ``;`` separated, found from the header line; with ``;`` a decimal
comma is accepted) or a JSON array of objects (RFC 8259). Every problem is
collected into a :class:`Report` of :class:`Issue` (row, column, code,
message); a submission with any issue is refused as a whole.

Rows are numbered from 1 (the first data row; a CSV header is row 0, as are
problems with the file as a whole). Messages never quote a cell's value:
a cell may name a person (staff) or be anything a hospital typed. They say
what was expected instead (type, allowed codes, range).
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from salus.warehouse.datasets.definitions import ATC_PATTERN
from salus.warehouse.datasets.schema import Column, DatasetSchema

__all__ = ["MAX_ISSUES", "Issue", "Report", "Submission", "parse_rows", "validate_rows"]

#: At most this many issues are reported (the report says it was cut).
MAX_ISSUES = 1000

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_ATC = re.compile(ATC_PATTERN)


@dataclass(frozen=True, slots=True)
class Issue:
    row: int
    column: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "code": self.code, "message": self.message}


@dataclass(slots=True)
class Report:
    issues: list[Issue] = field(default_factory=list)
    truncated: bool = False

    def add(self, row: int, column: str | None, code: str, message: str) -> None:
        if len(self.issues) >= MAX_ISSUES:
            self.truncated = True
            return
        self.issues.append(Issue(row, column, code, message))

    def __bool__(self) -> bool:
        return bool(self.issues)

    def to_json(self) -> dict[str, Any]:
        return {
            "errors": len(self.issues),
            "truncated": self.truncated,
            "issues": [i.to_json() for i in self.issues],
        }


@dataclass(slots=True)
class Submission:
    """The rows of a valid submission, typed (``None`` for empty optional cells)."""

    rows: list[dict[str, Any]]
    period: str


def _decode(data: bytes, report: Report) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.add(0, None, "encoding", f"The file is not UTF-8 (bad byte at offset {exc.start}).")
        return None


def _separator(header_line: str) -> str:
    return ";" if header_line.count(";") > header_line.count(",") else ","


def parse_rows(
    data: bytes, media: str, report: Report, *, max_rows: int
) -> tuple[list[str], list[dict[str, Any]], bool]:
    """(columns, raw rows, decimal comma allowed) from CSV or JSON ``data``.

    ``media`` is ``csv``, ``json`` or ``auto`` (JSON when the text begins with
    ``[``). Problems go to ``report`` (row 0: the file)."""
    text = _decode(data, report)
    if text is None:
        return [], [], False
    stripped = text.lstrip()
    if media == "json" or (media == "auto" and stripped.startswith("[")):
        return _parse_json(stripped, report, max_rows)
    return _parse_csv(text, report, max_rows)


def _parse_json(
    text: str, report: Report, max_rows: int
) -> tuple[list[str], list[dict[str, Any]], bool]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        report.add(0, None, "format", f"The body is not JSON (line {exc.lineno}).")  # type: ignore[attr-defined]
        return [], [], False
    if not isinstance(body, list):
        report.add(0, None, "format", "A JSON submission is an array of row objects.")
        return [], [], False
    if len(body) > max_rows:
        report.add(0, None, "too-many-rows", f"At most {max_rows} rows per submission.")
        return [], [], False
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    seen: set[str] = set()
    for number, item in enumerate(body, start=1):
        if not isinstance(item, dict):
            report.add(number, None, "format", "Each row must be a JSON object.")
            continue
        for name in item:
            if name not in seen:
                seen.add(name)
                columns.append(str(name))
        rows.append({"__row": number, **item})
    return columns, rows, False


def _parse_csv(
    text: str, report: Report, max_rows: int
) -> tuple[list[str], list[dict[str, Any]], bool]:
    first = text.split("\n", 1)[0]
    sep = _separator(first)
    try:
        lines = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True))
    except csv.Error as exc:
        report.add(0, None, "format", f"The CSV is malformed ({exc}).")
        return [], [], False
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        report.add(0, None, "format", "The file is empty (a header line is needed).")
        return [], [], False
    header = [h.strip() for h in lines[0]]
    if len(lines) - 1 > max_rows:
        report.add(0, None, "too-many-rows", f"At most {max_rows} rows per submission.")
        return [], [], False
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines[1:], start=1):
        if len(line) != len(header):
            report.add(
                number,
                None,
                "row-length",
                f"The row has {len(line)} fields; the header has {len(header)}.",
            )
            continue
        rows.append({"__row": number, **dict(zip(header, line, strict=True))})
    return header, rows, sep == ";"


def _check_header(schema: DatasetSchema, columns: list[str], report: Report) -> bool:
    ok = True
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            report.add(0, name, "duplicate-column", "The column appears twice in the header.")
            ok = False
        seen.add(name)
        if name not in schema.names:
            report.add(
                0,
                name[:64],
                "unknown-column",
                f"Not a column of {schema.name} {schema.version}; see its template.",
            )
            ok = False
    for col in schema.columns:
        if col.required and col.name not in seen:
            report.add(0, col.name, "missing-column", "A required column is missing.")
            ok = False
    return ok


def _cell(col: Column, raw: Any, decimal_comma: bool) -> tuple[Any, str | None, str | None]:
    """(typed value, issue code, message); the value is None for an empty cell."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if col.required:
            return None, "required", "A value is required."
        return None, None, None
    if isinstance(raw, bool) or isinstance(raw, (dict, list)):
        return None, "type", f"Expected a {col.type}."
    text = raw.strip() if isinstance(raw, str) else raw
    value: Any
    if col.type == "integer":
        if isinstance(text, int):
            value = text
        elif isinstance(text, float) and text.is_integer():
            value = int(text)
        elif isinstance(text, str) and _INTEGER.match(text):
            value = int(text)
        else:
            return None, "type", "Expected an integer."
    elif col.type == "decimal":
        if isinstance(text, (int, float)):
            value = Decimal(str(text))
        else:
            candidate = str(text).replace(",", ".") if decimal_comma else str(text)
            if not _DECIMAL.match(candidate):
                return None, "type", "Expected a decimal number (a dot as decimal point)."
            try:
                value = Decimal(candidate)
            except InvalidOperation:  # pragma: no cover - the pattern guards it
                return None, "type", "Expected a decimal number."
    else:
        if not isinstance(text, str):
            return None, "type", f"Expected a {col.type} as text."
        value = text
    if col.type in ("integer", "decimal"):
        if col.minimum is not None and value < Decimal(str(col.minimum)):
            return None, "range", f"Must be at least {col.minimum}."
        if col.maximum is not None and value > Decimal(str(col.maximum)):
            return None, "range", f"Must be at most {col.maximum}."
        return (float(value) if col.type == "decimal" else value), None, None
    if col.type == "date":
        try:
            if not _DATE.match(value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            return None, "type", "Expected a date (YYYY-MM-DD)."
        return value, None, None
    if col.type == "month":
        if not _MONTH.match(value):
            return None, "type", "Expected a month (YYYY-MM)."
        return value, None, None
    if col.type == "code":
        if col.pattern and not re.match(col.pattern, value):
            label = "an ATC level-5 code (e.g. N02BE01)" if col.pattern == ATC_PATTERN else "a code"
            return None, "code-format", f"Expected {label}."
        if col.values and value not in col.values:
            if col.pattern == ATC_PATTERN:
                return None, "code-unknown", "The ATC code is not on the network's list."
            return None, "code", f"Expected one of: {', '.join(col.values)}."
        return value, None, None
    # string
    if len(value) > col.max_length:
        return None, "too-long", f"At most {col.max_length} characters."
    if col.pattern and not re.match(col.pattern, value):
        return None, "pattern", "Letters, digits, '.', '_' and '-' only."
    return value, None, None


def _month_days(period: str) -> int:
    year, month = int(period[:4]), int(period[5:7])
    return calendar.monthrange(year, month)[1]


def _row_rules(schema: DatasetSchema, number: int, row: dict[str, Any], report: Report) -> None:
    """Consistency between columns (only when the cells involved are valid)."""
    if schema.name == "medicines":
        need = ("opening_stock", "received", "consumed", "closing_stock")
        if all(row.get(n) is not None for n in need):
            available = row["opening_stock"] + row["received"]
            if row["consumed"] > available:
                report.add(
                    number,
                    "consumed",
                    "inconsistent",
                    "More consumed than opening stock plus received.",
                )
            elif row["closing_stock"] > available - row["consumed"]:
                report.add(
                    number,
                    "closing_stock",
                    "inconsistent",
                    "Closing stock exceeds opening stock + received - consumed.",
                )
    elif schema.name == "beds":
        if row.get("beds") is not None and row.get("occupied_bed_days") is not None:
            period = row.get("period")
            days = _month_days(period) if isinstance(period, str) else 31
            if row["occupied_bed_days"] > row["beds"] * days:
                report.add(
                    number,
                    "occupied_bed_days",
                    "inconsistent",
                    "More occupied bed-days than beds x days in the month.",
                )
    elif schema.name == "quality":
        if row.get("denominator") is not None and row.get("numerator") is not None:
            if row["indicator"] == "readmissions_30d" and row["numerator"] > row["denominator"]:
                report.add(
                    number,
                    "numerator",
                    "inconsistent",
                    "Readmissions cannot exceed the discharges in the denominator.",
                )


def validate_rows(
    schema: DatasetSchema,
    columns: list[str],
    raw_rows: list[dict[str, Any]],
    report: Report,
    *,
    org: str,
    period: str | None,
    today: date,
    decimal_comma: bool = False,
) -> Submission:
    """Type every cell and check keys, organization and period; issues go to ``report``."""
    if not _check_header(schema, columns, report):
        return Submission([], period or "")
    if not raw_rows and not report:
        report.add(0, None, "empty", "The submission has no rows.")
    if period is not None and not _MONTH.match(period):
        report.add(0, schema.period, "type", "The submission's period must be a month (YYYY-MM).")
        period = None
    current = f"{today.year:04d}-{today.month:02d}"
    typed_rows: list[dict[str, Any]] = []
    keys: dict[tuple[Any, ...], int] = {}
    for raw in raw_rows:
        number = int(raw["__row"])
        row: dict[str, Any] = {}
        for col in schema.columns:
            if col.name not in raw and not col.required:
                row[col.name] = None
                continue
            value, code, message = _cell(col, raw.get(col.name), decimal_comma)
            if code is not None:
                report.add(number, col.name, code, message or "")
            row[col.name] = value
        org_value = row.get(schema.org)
        if org_value is not None and org_value != org:
            report.add(
                number,
                schema.org,
                "wrong-organization",
                "The row belongs to another organization than the submitter's.",
            )
        month = row.get(schema.period)
        if month is not None:
            if period is None:
                period = month
            if month != period:
                report.add(
                    number,
                    schema.period,
                    "wrong-period",
                    f"Every row must be for the submission's period ({period}).",
                )
            elif month > current:
                report.add(number, schema.period, "future-period", "The period is in the future.")
        _row_rules(schema, number, row, report)
        key = tuple(row.get(k) or "" for k in schema.key)
        if all(row.get(k) is not None for k in schema.key if schema.column(k).required):
            if key in keys:
                report.add(
                    number,
                    ",".join(schema.key),
                    "duplicate-key",
                    f"The same key as row {keys[key]}.",
                )
            else:
                keys[key] = number
        typed_rows.append(row)
    return Submission(typed_rows, period or "")
