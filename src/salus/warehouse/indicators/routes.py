"""HTTP routes of the indicators.

* ``GET /api/v1/indicators``: the definitions (JSON).
* ``GET /api/v1/indicators/{id}?period=YYYY-MM&hospital=&by=sex,age_band&format=json|csv``
  (or ``from=YYYY-MM&to=YYYY-MM``: a range of months)
  (``refresh=true`` materializes the views first): the cells as the caller
  may see them (:meth:`~.engine.Indicators.compute`).
* ``GET /api/v1/indicators/{id}/$measure-report`` (same parameters): a FHIR
  ``Bundle`` (type ``collection``) of ``MeasureReport`` resources (FHIR R4
  §MeasureReport, type ``summary``), one per hospital (or the network) and
  month, the disaggregations as one ``stratifier``. Suppressed strata carry
  no counts and a ``data-absent-reason`` of ``masked``.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from salus.errors import InvalidInput
from salus.server.security import current_principal, services_of
from salus.warehouse.indicators.definitions_index import indicators
from salus.warehouse.indicators.engine import NETWORK, IndicatorResult, Indicators

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["install_indicator_routes", "measure_reports"]

ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"


async def _list(request: Request) -> Response:
    principal = await current_principal(request)
    engine = Indicators(services_of(request))
    engine.own_scope(principal)
    return JSONResponse({"indicators": [i.to_json(engine.min_cell) for i in indicators()]})


async def _result(request: Request) -> tuple[Indicators, IndicatorResult]:
    principal = await current_principal(request)
    engine = Indicators(services_of(request))
    q = request.query_params
    by = [d.strip() for part in q.getlist("by") for d in part.split(",") if d.strip()]
    first, last = _month(q.get("from")), _month(q.get("to"))
    result = await asyncio.to_thread(
        engine.compute,
        principal,
        str(request.path_params["id"]),
        period=q.get("period") or None,
        hospital=q.get("hospital") or None,
        by=by,
        refresh=q.get("refresh", "false").lower() == "true",
    )
    if first or last:  # a range of months (the console's time series links it)
        cells = [
            c for c in result.cells
            if (not first or c["period"] >= first) and (not last or c["period"] <= last)
        ]  # fmt: skip
        result = dataclasses.replace(result, cells=cells)
    return engine, result


def _month(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) != 7 or value[4] != "-" or not (value[:4] + value[5:]).isdigit():
        raise InvalidInput("A month is written YYYY-MM.", expression=["from", "to"])
    return value


async def _one(request: Request) -> Response:
    engine, result = await _result(request)
    if request.query_params.get("format", "json") == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        for cell in result.cells:
            writer.writerow(["" if cell[c] is None else cell[c] for c in result.columns])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8")
    return JSONResponse(result.to_json(engine.min_cell))


def measure_reports(result: IndicatorResult) -> dict[str, Any]:
    """The cells as a Bundle of summary MeasureReports (see the module doc)."""
    ind = result.indicator
    strata = [d for d in result.dimensions if d not in ("hospital", "period")]
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in result.cells:
        grouped.setdefault((cell["hospital"], cell["period"]), []).append(cell)
    entries = []
    for (hospital, period), cells in grouped.items():
        year, month = (int(x) for x in period.split("-"))
        end = f"{year + month // 12:04d}-{month % 12 + 1:02d}-01"
        group: dict[str, Any] = {"code": {"text": ind.title}}
        if strata:
            group["stratifier"] = [
                {
                    "code": [{"text": d} for d in strata],
                    "stratum": [
                        {
                            "component": [
                                {"code": {"text": d}, "value": {"text": str(cell[d])}}
                                for d in strata
                            ],
                            **_figures(ind.unit, cell),
                        }
                        for cell in cells
                    ],
                }
            ]
        else:
            group.update(_figures(ind.unit, cells[0]))
        report: dict[str, Any] = {
            "resourceType": "MeasureReport",
            "status": "complete",
            "type": "summary",
            "measure": f"urn:salus:indicator:{ind.id}|{ind.version}",
            "date": None,
            "period": {"start": f"{period}-01", "end": end},
            "group": [group],
        }
        report.pop("date")
        if hospital != NETWORK:
            report["reporter"] = {"reference": f"Organization/{hospital}"}
        entries.append({"resource": report})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _figures(unit: str, cell: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cell["suppressed"]:
        out["extension"] = [{"url": ABSENT, "valueCode": "masked"}]
        return out
    populations = []
    for name in ("numerator", "denominator"):
        if cell[name] is not None:
            coding = {"system": POPULATION, "code": name}
            populations.append({"code": {"coding": [coding]}, "count": int(cell[name])})
    if populations:
        out["population"] = populations
    if cell["value"] is not None:
        out["measureScore"] = {"value": cell["value"], "unit": unit}
    return out


async def _measure_report(request: Request) -> Response:
    _, result = await _result(request)
    return JSONResponse(measure_reports(result), media_type="application/fhir+json")


Endpoint = Callable[[Request], Awaitable[Response]]


def install_indicator_routes(api: FastAPI) -> None:
    routes: list[tuple[str, Endpoint]] = [
        ("/api/v1/indicators", _list),
        ("/api/v1/indicators/{id}/$measure-report", _measure_report),
        ("/api/v1/indicators/{id}", _one),
    ]
    for path, endpoint in routes:
        api.add_route(path, endpoint, methods=["GET"], include_in_schema=False)
