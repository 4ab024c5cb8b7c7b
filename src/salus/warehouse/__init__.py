"""The warehouse: SQL-on-FHIR v2 views, materialized as Parquet, queried with DuckDB.

:func:`install` creates ``services.warehouse`` (:class:`~salus.warehouse.service.Warehouse`:
stored ViewDefinitions, incremental materialization, SQL) and registers its
jobs; :func:`install_routes` adds ``/fhir/ViewDefinition`` (CRUD, ``$run``,
``$export``) and ``/api/v1/warehouse``. ``docs/warehouse.md`` describes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from salus.services import Services

__all__ = ["install", "install_routes"]


def install(services: Services) -> None:
    """Create the warehouse (``services.warehouse``) and its job handlers."""
    from salus.warehouse.export import register_export_job
    from salus.warehouse.service import MATERIALIZE_JOB, Warehouse

    services.warehouse = Warehouse(services)
    services.job_handlers.register(MATERIALIZE_JOB, services.warehouse.job)
    register_export_job(services)
    from salus.warehouse.indicators import register_indicators_job

    register_indicators_job(services)  # warehouse.indicators


def install_routes(api: FastAPI) -> None:
    """Mount the warehouse's HTTP routes (:mod:`salus.warehouse.routes`)."""
    from salus.warehouse.datasets.routes import install_dataset_routes
    from salus.warehouse.routes import install_warehouse_routes

    install_warehouse_routes(api)
    install_dataset_routes(api)  # operational datasets (/api/v1/datasets)
    from salus.warehouse.indicators.routes import install_indicator_routes

    install_indicator_routes(api)  # /api/v1/indicators
    from salus.warehouse.opendata.routes import install_opendata_routes

    install_opendata_routes(api)  # /api/v1/open-data, /open-data (public)
