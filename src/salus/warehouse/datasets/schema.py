"""Dataset schemas as data: columns, types, keys, period and load mode.

A schema is a plain mapping (:mod:`.definitions`) turned into a frozen
:class:`DatasetSchema`. It is published three ways: as JSON (``describe``),
as a CSV template (the header line, ``template_csv``) and as a JSON Schema
(draft 2020-12, ``json_schema``) describing one submission as a JSON array of
row objects. Column types:

* ``string`` (optional ``max_length``, ``pattern``);
* ``integer`` and ``decimal`` (optional ``minimum``/``maximum``);
* ``date`` (ISO 8601 ``YYYY-MM-DD``);
* ``month`` (``YYYY-MM``; the period column of every dataset);
* ``code`` (one of ``values``, or matching ``pattern`` and in ``values`` when
  both are given: the ATC codes).

``personal`` columns name a person (staff names): they are copied into the
FHIR resources (whose bodies are sealed at rest) but never kept in the
warehouse's row table, and never echoed in a validation report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["COLUMN_TYPES", "LOAD_MODES", "Column", "DatasetSchema", "schema_from_data"]

COLUMN_TYPES = frozenset({"string", "integer", "decimal", "date", "month", "code"})
LOAD_MODES = frozenset({"replace", "append"})


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    required: bool
    description: str
    values: tuple[str, ...] = ()
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 200
    personal: bool = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "description": self.description,
        }
        if self.values:
            out["values"] = list(self.values)
        if self.pattern:
            out["pattern"] = self.pattern
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.type == "string":
            out["maxLength"] = self.max_length
        if self.personal:
            out["personal"] = True
        return out

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one cell (strings are accepted for every type, as CSV gives them)."""
        schema: dict[str, Any] = {"description": self.description}
        if self.type == "integer":
            schema["type"] = "integer"
        elif self.type == "decimal":
            schema["type"] = "number"
        else:
            schema["type"] = "string"
        if self.type == "date":
            schema["format"] = "date"
        elif self.type == "month":
            schema["pattern"] = r"^\d{4}-(0[1-9]|1[0-2])$"
        elif self.type == "string":
            schema["maxLength"] = self.max_length
            if self.pattern:
                schema["pattern"] = self.pattern
        elif self.type == "code":
            if self.pattern:
                schema["pattern"] = self.pattern
            if self.values:
                schema["enum"] = list(self.values)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if not self.required:
            schema = {"anyOf": [schema, {"type": "null"}, {"const": ""}]}
        return schema


@dataclass(frozen=True, slots=True)
class DatasetSchema:
    name: str
    version: str
    title: str
    description: str
    columns: tuple[Column, ...]
    #: Columns whose values identify a row within an organization and period.
    key: tuple[str, ...]
    #: The column naming the reporting period (a month).
    period: str
    #: The column naming the submitting organization.
    org: str
    #: ``replace``: a submission replaces the organization's rows of its period;
    #: ``append``: it adds rows, a key already stored for the period is refused.
    mode: str
    #: The FHIR resource types the mapping produces.
    resources: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "key": list(self.key),
            "period": self.period,
            "org": self.org,
            "mode": self.mode,
            "resources": list(self.resources),
            "columns": [c.describe() for c in self.columns],
        }

    def template_csv(self) -> str:
        """The CSV template: the header line (UTF-8, comma separated)."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerow(self.names)
        return out.getvalue()

    def json_schema(self, base_url: str = "") -> dict[str, Any]:
        """A JSON Schema (draft 2020-12) for a submission as a JSON array of rows."""
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base_url}/api/v1/datasets/{self.name}/schema.json",
            "title": f"{self.title} (version {self.version})",
            "description": self.description,
            "type": "array",
            "items": {
                "type": "object",
                "properties": {c.name: c.json_schema() for c in self.columns},
                "required": [c.name for c in self.columns if c.required],
                "additionalProperties": False,
            },
            "x-salus-key": list(self.key),
            "x-salus-period": self.period,
            "x-salus-mode": self.mode,
        }


def schema_from_data(data: Mapping[str, Any]) -> DatasetSchema:
    """Build (and check) a schema from its data form (see :mod:`.definitions`)."""
    columns = []
    for raw in data["columns"]:
        col = Column(
            name=str(raw["name"]),
            type=str(raw["type"]),
            required=bool(raw.get("required", False)),
            description=str(raw.get("description", "")),
            values=tuple(raw.get("values", ())),
            pattern=raw.get("pattern"),
            minimum=raw.get("minimum"),
            maximum=raw.get("maximum"),
            max_length=int(raw.get("max_length", 200)),
            personal=bool(raw.get("personal", False)),
        )
        if col.type not in COLUMN_TYPES:
            raise ValueError(f"{data['name']}.{col.name}: unknown type {col.type}")
        if col.type == "code" and not (col.values or col.pattern):
            raise ValueError(f"{data['name']}.{col.name}: a code column needs values")
        columns.append(col)
    schema = DatasetSchema(
        name=str(data["name"]),
        version=str(data["version"]),
        title=str(data["title"]),
        description=str(data["description"]),
        columns=tuple(columns),
        key=tuple(data["key"]),
        period=str(data["period"]),
        org=str(data["org"]),
        mode=str(data["mode"]),
        resources=tuple(data["resources"]),
    )
    names = schema.names
    if len(set(names)) != len(names):
        raise ValueError(f"{schema.name}: duplicate column names")
    for needed in (*schema.key, schema.period, schema.org):
        if needed not in names:
            raise ValueError(f"{schema.name}: {needed} is not a column")
    if schema.column(schema.period).type != "month" or not schema.column(schema.period).required:
        raise ValueError(f"{schema.name}: the period column must be a required month")
    if schema.mode not in LOAD_MODES:
        raise ValueError(f"{schema.name}: unknown load mode {schema.mode}")
    if any(schema.column(k).personal for k in schema.key):
        raise ValueError(f"{schema.name}: a key column cannot be personal")
    return schema
