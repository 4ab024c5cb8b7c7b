"""The indicator set: definitions as data (``definitions/*.json``, one per indicator).

Each file holds ``id``, ``version`` (bump it when the definition's meaning
changes), ``title``, ``description``, ``numerator`` and ``denominator``
(texts; ``denominator`` is null for a count), ``unit``, ``scale`` (the value
is ``numerator / denominator * scale``; null for a count: the value is the
numerator), ``disaggregations`` (among ``hospital``, ``period``, ``sex``,
``age_band``, ``ward``, ``chapter``, ``modality``), ``always`` (dimensions
always shown, such as the ICD-10 chapter), ``sources`` (the ViewDefinitions
of ``views/`` and the operational datasets it reads), ``suppression``
(``counts``: which of numerator and denominator are small-cell suppressed)
and ``sql``: one statement over the views, the dataset tables and the
helper views and functions of :mod:`.portable`, in the SQL that DuckDB and
Spark share (no ``strftime``: ``substr(CAST(d AS STRING), 1, 7)``),
returning ``hospital``, ``period``, the dimensions and ``numerator``,
``denominator`` per cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from salus.errors import NotFound

__all__ = ["DIMENSIONS", "Indicator", "indicator", "indicators", "view_definitions"]

DIMENSIONS = ("hospital", "period", "sex", "age_band", "ward", "chapter", "modality")


@dataclass(frozen=True, slots=True)
class Indicator:
    id: str
    version: str
    title: str
    description: str
    numerator: str
    denominator: str | None
    unit: str
    scale: float | None
    disaggregations: tuple[str, ...]
    always: tuple[str, ...]
    views: tuple[str, ...]
    datasets: tuple[str, ...]
    suppressed_counts: tuple[str, ...]
    sql: str

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Indicator:
        dims = tuple(data["disaggregations"])
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown or dims[:2] != ("hospital", "period"):
            raise ValueError(f"indicator {data['id']}: bad disaggregations {dims}")
        return cls(
            id=data["id"],
            version=data["version"],
            title=data["title"],
            description=data["description"],
            numerator=data["numerator"],
            denominator=data.get("denominator"),
            unit=data["unit"],
            scale=data.get("scale"),
            disaggregations=dims,
            always=tuple(data.get("always", ())),
            views=tuple(data["sources"]["views"]),
            datasets=tuple(data["sources"]["datasets"]),
            suppressed_counts=tuple(data["suppression"]["counts"]),
            sql=data["sql"],
        )

    def to_json(self, min_cell: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "unit": self.unit,
            "scale": self.scale,
            "disaggregations": list(self.disaggregations),
            "sources": {"views": list(self.views), "datasets": list(self.datasets)},
            "suppression": {"counts": list(self.suppressed_counts), "minCell": min_cell},
        }


def _files(folder: str) -> list[dict[str, Any]]:
    root = resources.files("salus.warehouse.indicators").joinpath(folder)
    found = [
        json.loads(entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if entry.name.endswith(".json")
    ]
    return sorted(found, key=lambda d: str(d.get("id") or d.get("name")))


@cache
def indicators() -> tuple[Indicator, ...]:
    """Every defined indicator, by id."""
    return tuple(Indicator.from_data(d) for d in _files("definitions"))


def indicator(key: str) -> Indicator:
    for found in indicators():
        if found.id == key:
            return found
    raise NotFound("No such indicator.")


@cache
def _views() -> tuple[tuple[str, str], ...]:
    return tuple((d["name"], json.dumps(d)) for d in _files("views"))


def view_definitions() -> dict[str, dict[str, Any]]:
    """The ViewDefinitions the indicators read, by name (fresh copies)."""
    return {name: json.loads(text) for name, text in _views()}
