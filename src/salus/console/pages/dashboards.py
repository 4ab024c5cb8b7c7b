"""The warehouse dashboards (issue 7 item 4, issue 8 "the dashboards").

* ``/dashboards``: the health authority's network overview (headline
  indicators of a month, per hospital); ``/dashboards/compare`` (one
  indicator across hospitals: bar chart and table); ``/dashboards/trend`` (one
  indicator over months, the network and each hospital: line chart and
  table); ``/dashboards/hospitals/{id}`` (drill-down to a hospital: its
  indicators and their disaggregations by sex, age band and ward). For the
  ``authority_analyst`` role, any person of the authority and the network
  operator's administrators.
* ``/dashboards/hospital``: a hospital's own dashboard (``data_steward``,
  ``administrator``, ``hospital_integration`` of a hospital): its figures
  unsuppressed, the network's for comparison, and its data-quality score.

Figures come from :class:`~salus.warehouse.indicators.engine.Indicators`
with the signed-in principal, so small-cell suppression is exactly the
indicators API's (docs/warehouse.md, "Suppression and access"): an analyst
sees aggregates with small cells suppressed, a hospital its own cells
unsuppressed and every other cell as the analyst does. Results are kept a
few minutes per (indicator, disaggregation, reader's scope), and dropped as
soon as a view is re-materialized, a dataset submitted or a snapshot stored
(:mod:`.dashboards_data`); every page view is audited. The CSV links are the
indicators API's own CSV (the session cookie authenticates it). The authority
and the operator may ask for the schedule's job to run now
(``POST /dashboards/compute``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from babel.numbers import format_decimal
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select

from salus.console import i18n
from salus.console.charts import Bar, Series, bar_chart, format_number, line_chart
from salus.console.i18n import N_
from salus.console.pages.dashboards_data import Reader, kept_state, request_computation
from salus.console.pages.dashboards_labels import (
    DIMENSION_TITLES,
    VALUE_LABELS,
    description_of,
    title_of,
    unit_of,
)
from salus.console.pages.dashboards_quality import rejections
from salus.console.web import (
    ConsoleUser,
    NavItem,
    Paging,
    check_csrf,
    console_router,
    has_role,
    nav_item,
    read_form,
    redirect,
    render,
)
from salus.db.tables import organizations
from salus.errors import Forbidden, InvalidInput, NotFound
from salus.security.principal import Principal
from salus.server.security import services_of
from salus.services import Services
from salus.warehouse.indicators.definitions_index import Indicator, indicator, indicators
from salus.warehouse.indicators.engine import NETWORK, IndicatorResult

__all__ = ["HEADLINE", "QUALITY_WEIGHTS", "install", "quality_score"]

_ = i18n.gettext

#: The network overview's headline indicators, in the order shown.
HEADLINE = (
    "admissions",
    "average-length-of-stay",
    "bed-occupancy",
    "in-hospital-mortality",
    "readmissions-30d",
    "medicine-stock-outs",
    "equipment-availability",
    "data-timeliness",
    "data-completeness",
)
#: Components of a hospital's data-quality score and their weights.
QUALITY_WEIGHTS = {"data-completeness": 0.5, "data-timeliness": 0.5}
BREAKDOWNS = ("sex", "age_band", "ward")
HOSPITAL_ROLES = frozenset({"data_steward", "administrator", "hospital_integration"})

# -- who may see what ------------------------------------------------------------------


def authority_reader(services: Services, principal: Principal) -> bool:
    kind = services.org_kinds.kind(principal.org_id)
    return (
        kind == "authority"
        or "authority_analyst" in principal.roles
        or (kind == "operator" and "administrator" in principal.roles)
    )


def hospital_reader(services: Services, principal: Principal) -> bool:
    return services.org_kinds.kind(principal.org_id) == "hospital" and bool(
        principal.roles & HOSPITAL_ROLES
    )


def _hospital_names(services: Services) -> dict[str, str]:
    with services.db.read() as conn:
        rows = conn.execute(
            select(organizations.c.id, organizations.c.name).where(
                organizations.c.kind == "hospital"
            )
        ).all()
    return {str(r.id): str(r.name) for r in rows}


def _cells(result: IndicatorResult, **match: Any) -> list[dict[str, Any]]:
    return [c for c in result.cells if all(c.get(k) == v for k, v in match.items())]


#: id(result) -> (result, {(hospital, period): cell}) of results without other dimensions
_INDEXES: dict[int, tuple[IndicatorResult, dict[tuple[str, str], dict[str, Any]]]] = {}


def _cell(result: IndicatorResult, hospital: str, period: str) -> dict[str, Any] | None:
    """The cell of a hospital (or the network) and month, found through an index
    built once per result (a page asks for hospitals x indicators x months)."""
    entry = _INDEXES.get(id(result))
    if entry is None or entry[0] is not result:
        index: dict[tuple[str, str], dict[str, Any]] = {}
        for cell in result.cells:
            index.setdefault((str(cell["hospital"]), str(cell["period"])), cell)
        if len(_INDEXES) > 500:
            _INDEXES.clear()
        entry = _INDEXES[id(result)] = (result, index)
    return entry[1].get((hospital, period))


def _periods(results: Sequence[IndicatorResult]) -> list[str]:
    return sorted({str(c["period"]) for r in results for c in r.cells})


def figure(ind: Indicator, cell: dict[str, Any] | None) -> dict[str, Any]:
    """A cell as templates show it: ``text`` and a ``state`` (value, suppressed, none)."""
    if cell is None:
        return {"text": _("no data"), "state": "none", "value": None, "cell": None}
    if cell["suppressed"]:
        return {"text": _("suppressed"), "state": "suppressed", "value": None, "cell": cell}
    value = cell["value"]
    if value is None:
        return {"text": _("no data"), "state": "none", "value": None, "cell": cell}
    unit = unit_of(ind)
    text = format_number(value) + (f" {unit}" if unit and unit != "%" else unit)
    return {"text": text, "state": "value", "value": float(value), "cell": cell}


def quality_score(figures: dict[str, float | None]) -> float | None:
    """The data-quality score (0-100): the weighted mean of :data:`QUALITY_WEIGHTS`'s
    components that have a value (None when none has)."""
    parts = [(QUALITY_WEIGHTS[k], v) for k, v in figures.items() if v is not None]
    weight = sum(w for w, _ in parts)
    return round(sum(w * v for w, v in parts) / weight, 1) if weight else None


# -- query parameters -----------------------------------------------------------------------


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def _month(request: Request, name: str) -> str | None:
    value = _param(request, name)
    if value is not None and not (
        len(value) == 7 and value[4] == "-" and value[:4].isdigit() and value[5:].isdigit()
    ):
        raise InvalidInput(N_("A month is written YYYY-MM."))
    return value


def _indicator(request: Request, default: str) -> Indicator:
    try:
        return indicator(_param(request, "indicator") or default)
    except NotFound:
        raise NotFound(N_("No such indicator.")) from None


def _csv(ind: Indicator, **params: str | None) -> str:
    query = {"format": "csv", **{k: v for k, v in params.items() if v}}
    return f"/api/v1/indicators/{ind.id}?{urlencode(query)}"


async def _open(request: Request, principal: Principal, allowed: Callable[..., bool]) -> Reader:
    services = services_of(request)
    if services.warehouse is None:
        raise NotFound(N_("The warehouse is not installed."))
    if not allowed(services, principal):
        raise Forbidden(
            N_("The dashboards are for the health authority, the operator and hospital data roles.")
        )
    return await asyncio.to_thread(Reader.open, services, principal, kept_state(request))


def _options(names: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(names.items(), key=lambda item: item[1])


# -- pages ---------------------------------------------------------------------------------------


def _overview(reader: Reader, request: Request, names: dict[str, str]) -> dict[str, Any]:
    results = reader.many(HEADLINE)
    periods = _periods(list(results.values()))
    period = _month(request, "period") or (periods[-1] if periods else None)
    paging = Paging.of(request).with_total(len(names))
    shown = _options(names)[paging.offset : paging.offset + paging.size]
    cards = []
    for result in results.values():
        ind = result.indicator
        cell = _cell(result, NETWORK, period) if period else None
        cards.append({"ind": ind, "title": title_of(ind), "figure": figure(ind, cell)})
    rows = [
        {
            "id": org,
            "name": name,
            "figures": [
                figure(r.indicator, _cell(r, org, period) if period else None)
                for r in results.values()
            ],
        }
        for org, name in shown
    ]
    return {
        "period": period,
        "periods": periods,
        "cards": cards,
        "columns": [title_of(r.indicator) for r in results.values()],
        "rows": rows,
        "paging": paging,
    }


def _compare(reader: Reader, request: Request, names: dict[str, str]) -> dict[str, Any]:
    ind = _indicator(request, "bed-occupancy")
    result = reader.result(ind.id)
    periods = _periods([result])
    period = _month(request, "period") or (periods[-1] if periods else None)
    paging = Paging.of(request).with_total(len(names))
    shown = _options(names)[paging.offset : paging.offset + paging.size]
    rows: list[dict[str, Any]] = []
    bars = []
    for org, name in [(NETWORK, _("Network")), *shown]:
        cell = _cell(result, org, period) if period else None
        shown_figure = figure(ind, cell)
        rows.append({"id": org, "name": name, "figure": shown_figure, "cell": cell})
        bars.append(Bar(name, shown_figure["value"], shown_figure["text"], org == NETWORK))
    chart = bar_chart(
        "compare-chart",
        _("%(indicator)s by hospital, %(period)s")
        % {"indicator": title_of(ind), "period": period or "—"},
        _("Bar chart of the table next to it: one bar per hospital and one for the network."),
        bars,
        unit=unit_of(ind),
        missing=_("no data"),
    )
    return {
        "ind": ind,
        "description": description_of(ind),
        "period": period,
        "periods": periods,
        "rows": rows,
        "chart": chart,
        "paging": paging,
        "csv": _csv(ind, period=period),
    }


def _trend(
    reader: Reader, request: Request, names: dict[str, str], only: str | None = None
) -> dict[str, Any]:
    ind = _indicator(request, "admissions")
    result = reader.result(ind.id)
    hospital = only or _param(request, "hospital")
    if hospital is not None and hospital not in names:
        raise NotFound(N_("No such hospital."))
    periods = _periods([result])
    start, end = _month(request, "from"), _month(request, "to")
    if start and end and start > end:
        raise InvalidInput(N_("The first month is after the last."))
    chosen = [p for p in periods if (not start or p >= start) and (not end or p <= end)]
    if not start and not end:
        chosen = chosen[-12:]
    lines = [(NETWORK, _("Network"))]
    lines += [(hospital, names[hospital])] if hospital else _options(names)
    series, table = [], []
    for org, name in lines:
        figures = [figure(ind, _cell(result, org, p)) for p in chosen]
        series.append(Series(name, [f["value"] for f in figures]))
        table.append({"id": org, "name": name, "figures": figures})
    chart = line_chart(
        "trend-chart",
        _("%(indicator)s per month") % {"indicator": title_of(ind)},
        _("Line chart of the table below: one line for the network and one per hospital."),
        chosen,
        series,
        unit=unit_of(ind),
    )
    return {
        "ind": ind,
        "hospital": hospital,
        "start": start or (chosen[0] if chosen else ""),
        "end": end or (chosen[-1] if chosen else ""),
        "months": chosen,
        "table": table,
        "chart": chart,
        "csv": _csv(ind, hospital=hospital, **{"from": chosen[0] if chosen else start, "to": end}),
    }


def _drill(reader: Reader, request: Request, org: str, names: dict[str, str]) -> dict[str, Any]:
    ind = _indicator(request, "admissions")
    dims = [d for d in BREAKDOWNS if d in ind.disaggregations]
    results = reader.many(HEADLINE, [(ind.id, (d,)) for d in dims])
    periods = _periods(list(results.values()))
    period = _month(request, "period") or (periods[-1] if periods else None)
    rows = []
    for result in results.values():
        shown = result.indicator
        own = figure(shown, _cell(result, org, period) if period else None)
        network = figure(shown, _cell(result, NETWORK, period) if period else None)
        rows.append({"ind": shown, "title": title_of(shown), "own": own, "network": network})
    breakdowns = []
    for dim in dims:
        split = reader.result(ind.id, (dim,))
        cells = _cells(split, hospital=org, period=period)
        entries: list[tuple[str, dict[str, Any]]] = [
            (_(VALUE_LABELS.get(str(c[dim]), str(c[dim]))), figure(ind, c))
            for c in sorted(cells, key=lambda c: str(c[dim]))
        ]
        chart = bar_chart(
            f"split-{dim}",
            _("%(indicator)s by %(dimension)s")
            % {"indicator": title_of(ind), "dimension": _(DIMENSION_TITLES[dim]).lower()},
            _("Bar chart of the table next to it."),
            [Bar(label, shown["value"], shown["text"]) for label, shown in entries],
            unit=unit_of(ind),
            missing=_("no data"),
            width=560,
        )
        breakdowns.append(
            {
                "dim": dim,
                "title": _(DIMENSION_TITLES[dim]),
                "entries": [{"label": label, "figure": shown} for label, shown in entries],
                "chart": chart,
                "csv": _csv(ind, period=period, hospital=org, by=dim),
            }  # fmt: skip
        )
    choices = [
        (i.id, title_of(i))
        for i in indicators()
        if any(d in i.disaggregations for d in BREAKDOWNS) and not i.always
    ]
    return {
        "org": org,
        "name": names[org],
        "period": period,
        "periods": periods,
        "rows": rows,
        "ind": ind,
        "ind_title": title_of(ind),
        "choices": choices,
        "breakdowns": breakdowns,
    }


def _quality(reader: Reader, org: str, period: str | None) -> dict[str, Any]:
    components = []
    values: dict[str, float | None] = {}
    for key in QUALITY_WEIGHTS:
        result = reader.result(key)
        ind = result.indicator
        shown = figure(ind, _cell(result, org, period) if period else None)
        values[key] = shown["value"]
        components.append(
            {
                "title": title_of(ind),
                "figure": shown,
                "weight": round(QUALITY_WEIGHTS[key] * 100),
                "description": description_of(ind),
            }  # fmt: skip
        )
    score = quality_score(values)
    text = None if score is None else format_decimal(score, "0.0", locale=i18n.current_locale())
    return {"score": score, "score_text": text, "components": components}


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(
        NavItem(
            "/dashboards",
            N_("Dashboards"),
            60,
            has_role("authority_analyst", "administrator", "data_steward", "hospital_integration"),
            key="d",
        )
    )

    @router.get("/dashboards")
    async def overview(request: Request, principal: ConsoleUser) -> Response:
        services = services_of(request)
        if hospital_reader(services, principal) and not authority_reader(services, principal):
            return redirect("/dashboards/hospital")
        reader = await _open(request, principal, authority_reader)

        def build() -> dict[str, Any]:
            context = _overview(reader, request, _hospital_names(services))
            reader.audit("overview")
            context["computed_at"] = reader.computed_at
            return context

        context = await asyncio.to_thread(build)
        context["queued"] = request.query_params.get("queued", "").isdigit()
        return render(request, "dashboards/overview.html", context, title=_("Network overview"))

    @router.post("/dashboards/compute")
    async def compute(request: Request, principal: ConsoleUser) -> Response:
        """Ask for the indicators to be computed now (the schedule's job, run by the
        primary's job workers), e.g. right after a demo or a large submission."""
        form = await read_form(request)
        check_csrf(request, form)
        services = services_of(request)
        if not authority_reader(services, principal):
            raise Forbidden(N_("Only the health authority and the operator start a computation."))
        job_id = await asyncio.to_thread(request_computation, services, principal)
        return redirect(f"/dashboards?queued={job_id}")

    @router.get("/dashboards/compare")
    async def compare(request: Request, principal: ConsoleUser) -> Response:
        reader = await _open(request, principal, authority_reader)

        def build() -> dict[str, Any]:
            context = _compare(reader, request, _hospital_names(reader.services))
            reader.audit("compare")
            context["computed_at"] = reader.computed_at
            return context

        context = await asyncio.to_thread(build)
        context["choices"] = [(i.id, title_of(i)) for i in indicators() if not i.always]
        return render(request, "dashboards/compare.html", context, title=_("Compare hospitals"))

    @router.get("/dashboards/trend")
    async def trend(request: Request, principal: ConsoleUser) -> Response:
        reader = await _open(request, principal, authority_reader)

        def build() -> dict[str, Any]:
            names = _hospital_names(reader.services)
            context = _trend(reader, request, names)
            context["hospitals"] = _options(names)
            reader.audit("trend")
            context["computed_at"] = reader.computed_at
            return context

        context = await asyncio.to_thread(build)
        context["choices"] = [(i.id, title_of(i)) for i in indicators() if not i.always]
        return render(request, "dashboards/trend.html", context, title=_("Time series"))

    @router.get("/dashboards/hospitals/{org}")
    async def drill(request: Request, org: str, principal: ConsoleUser) -> Response:
        reader = await _open(request, principal, authority_reader)

        def build() -> dict[str, Any]:
            names = _hospital_names(reader.services)
            if org not in names:
                raise NotFound(N_("No such hospital."))
            context = _drill(reader, request, org, names)
            reader.audit(f"hospitals/{org}")
            context["computed_at"] = reader.computed_at
            return context

        context = await asyncio.to_thread(build)
        return render(request, "dashboards/drill.html", context, title=context["name"])

    @router.get("/dashboards/hospital")
    async def own(request: Request, principal: ConsoleUser) -> Response:
        reader = await _open(request, principal, hospital_reader)
        org = principal.org_id

        def build() -> dict[str, Any]:
            names = _hospital_names(reader.services)
            context = _drill(reader, request, org, names)
            context["trend"] = _trend(reader, request, names, only=org)
            context["quality"] = _quality(reader, org, context["period"])
            context["rejections"] = rejections(reader.services, principal, org)
            reader.audit("hospital")
            context["computed_at"] = reader.computed_at
            return context

        context = await asyncio.to_thread(build)
        return render(request, "dashboards/hospital.html", context, title=context["name"])

    api.include_router(router)
