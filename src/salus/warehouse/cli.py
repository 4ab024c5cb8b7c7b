"""``salus warehouse views|define|materialize|query``: the warehouse from the server host.

The CLI acts as the host's SYSTEM principal (audited, like every CLI command).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from salus.cliutil import command_errors, console, settings_from

if TYPE_CHECKING:
    from salus.security.principal import Principal
    from salus.services import Services
    from salus.warehouse.service import Warehouse

__all__ = ["warehouse"]


@click.group()
def warehouse() -> None:
    """SQL-on-FHIR views: define, materialize as Parquet, query with DuckDB."""


def _open(ctx: click.Context) -> tuple[Services, Warehouse, Principal]:
    import getpass

    from salus.security.principal import AuthMethod, Principal, PrincipalKind
    from salus.services import Services

    services = Services.build(settings_from(ctx))
    assert services.warehouse is not None  # noqa: S101 - installed by Services.build
    principal = Principal(
        kind=PrincipalKind.SYSTEM,
        id=f"cli:{getpass.getuser()}"[:100],
        org_id="*",
        auth_method=AuthMethod.LOCAL,
    )
    return services, services.warehouse, principal


@warehouse.command("views")
@click.pass_context
def views(ctx: click.Context) -> None:
    """List the stored ViewDefinitions and their materialization."""
    with command_errors():
        services, wh, _ = _open(ctx)
        try:
            for v in wh.catalog.list():
                when = (
                    v.materialized_at.isoformat(timespec="seconds")
                    if v.materialized_at
                    else "never"
                )
                console.print(f"{v.name}\t{v.resource_type}\t{v.row_count} rows\t{when}\t{v.id}")
        finally:
            services.close()


@warehouse.command("define")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--id", "view_id", help="Store under this id (update if it exists).")
@click.pass_context
def define(ctx: click.Context, file: Path, view_id: str | None) -> None:
    """Store (or update) the ViewDefinition in FILE (JSON)."""
    with command_errors():
        services, wh, principal = _open(ctx)
        try:
            saved, created = wh.catalog.save(principal, json.loads(file.read_text()), view_id)
            console.print(f"{'created' if created else 'updated'} {saved.name} ({saved.id})")
        finally:
            services.close()


@warehouse.command("materialize")
@click.argument("view", required=False)
@click.option("--full", is_flag=True, help="Rebuild from scratch instead of incrementally.")
@click.pass_context
def materialize(ctx: click.Context, view: str | None, full: bool) -> None:
    """Bring VIEW (name or id; every view when omitted) up to date."""
    with command_errors():
        services, wh, principal = _open(ctx)
        try:
            if view:
                reports = [wh.materialize(principal, view, full=full)]
            else:
                reports = wh.materialize_all(principal, full=full)
            for r in reports:
                console.print(
                    f"{r.view}: {r.resources} resources read, {r.rows_written} rows written, "
                    f"{r.rows_total} rows in {r.parts} parts ({r.seconds:.2f} s)"
                )
        finally:
            services.close()


@warehouse.command("query")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--max-rows", type=int, default=10_000, show_default=True)
@click.pass_context
def query(ctx: click.Context, sql: str, fmt: str, max_rows: int) -> None:
    """Run SQL over the materialized views (each view is a table named after it)."""
    with command_errors():
        services, wh, principal = _open(ctx)
        try:
            result = wh.query(principal, sql, max_rows=max_rows)
        finally:
            services.close()
        if fmt == "json":
            click.echo(json.dumps(result.records(), default=str, ensure_ascii=False))
        elif fmt == "csv":
            writer = csv.writer(sys.stdout)
            writer.writerow(result.columns)
            writer.writerows(result.rows)
        else:
            from rich.table import Table

            table = Table(*result.columns)
            for row in result.rows:
                table.add_row(*("" if v is None else str(v) for v in row))
            console.print(table)


@warehouse.command("indicators")
@click.option("--compute", is_flag=True, help="Materialize the views, then compute.")
@click.option("--id", "ind_id", help="One indicator (every one when omitted).")
@click.option("--period", help="One month (YYYY-MM).")
@click.option("--schedule", is_flag=True, help="Enqueue a warehouse.indicators job instead.")
@click.pass_context
def indicators_cmd(
    ctx: click.Context, compute: bool, ind_id: str | None, period: str | None, schedule: bool
) -> None:
    """List the indicators, or compute them (--compute) as CSV on stdout.

    For a schedule, run ``salus warehouse indicators --schedule`` from cron (the
    primary's worker runs the job)."""
    from salus.warehouse.indicators import INDICATORS_JOB
    from salus.warehouse.indicators.definitions_index import indicators
    from salus.warehouse.indicators.engine import Indicators

    with command_errors():
        services, _, principal = _open(ctx)
        try:
            if schedule:
                job_id = services.jobs.enqueue(INDICATORS_JOB, {})
                console.print(f"enqueued {INDICATORS_JOB} job {job_id}")
                return
            chosen = [i for i in indicators() if ind_id in (None, i.id)]
            if not compute:
                for ind in chosen:
                    console.print(f"{ind.id}\t{ind.version}\t{ind.unit}\t{ind.title}")
                return
            engine = Indicators(services)
            engine.refresh()
            writer = csv.writer(sys.stdout)
            for ind in chosen:
                engine.snapshot(ind)  # fresh cells, kept for the API (snapshots.py)
                result = engine.compute(principal, ind.id, period=period)
                writer.writerow(["indicator", *result.columns])
                for cell in result.cells:
                    writer.writerow([ind.id, *(cell[c] for c in result.columns)])
        finally:
            services.close()


# -- open data (salus warehouse opendata publish|list) ------------------------------------
from salus.warehouse.opendata.cli import opendata  # noqa: E402 - registered below

warehouse.add_command(opendata)


@warehouse.command("handoff")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-refresh", is_flag=True, help="Use the views as last materialized.")
@click.pass_context
def handoff_cmd(ctx: click.Context, folder: Path, no_refresh: bool) -> None:
    """Write the indicators' inputs to FOLDER as plain Parquet, with the SQL for Spark.

    The files are de-identified but NOT encrypted: keep FOLDER on the cluster's
    protected storage. Audited (docs/warehouse.md, "Spark hand-off")."""
    from salus.warehouse.indicators.engine import Indicators
    from salus.warehouse.indicators.portable import handoff

    with command_errors():
        services, _, principal = _open(ctx)
        try:
            engine = Indicators(services)
            if not no_refresh:
                engine.refresh()
            written = handoff(engine, principal, folder)
        finally:
            services.close()
        for name, path in sorted(written.items()):
            console.print(f"{name}\t{path}")
        console.print(f"statements: {folder / 'prelude-spark.sql'}, {folder / 'indicators.json'}")
