"""Indicators (issue 7, item 3): definitions as data, computed with DuckDB.

:mod:`.definitions_index` loads the definitions (``definitions/*.json``) and the
ViewDefinitions they read (``views/*.json``); :mod:`.engine` computes them
with suppression and access rules; :mod:`.routes` serves them as JSON, CSV
and FHIR MeasureReports. The job kind :data:`INDICATORS_JOB` refreshes the
views and computes every indicator (``docs/warehouse.md``, "Indicators").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from salus.jobs import JobContext

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["INDICATORS_JOB", "register_indicators_job"]

#: The job kind that materializes the indicators' views and computes them all.
INDICATORS_JOB = "warehouse.indicators"


def register_indicators_job(services: Services) -> None:
    def handle(ctx: JobContext) -> None:
        from salus.warehouse.indicators.definitions_index import indicators
        from salus.warehouse.indicators.engine import Indicators

        engine = Indicators(services)
        engine.refresh(full=bool(ctx.payload.get("full")))
        for ind in indicators():
            engine.snapshot(ind)  # the cells API reads use (snapshots.py)
            ctx.heartbeat()

    services.job_handlers.register(INDICATORS_JOB, handle)
    interval = services.settings.warehouse_indicator_interval
    if interval > 0 and services.settings.jobs_enabled:
        from salus.warehouse.indicators.snapshots import IndicatorSchedule

        services.listeners.append(IndicatorSchedule(services, interval))  # primary only
