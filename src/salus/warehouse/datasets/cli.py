"""``salus submit DATASET FILE --org ORG`` and ``salus datasets list|template|schema|history``.

``submit`` acts on the host as the SYSTEM principal *for* the organization
given with ``--org`` (it must be a hospital; the file's ``org`` column must
name it): the same validation, transaction and audit as the HTTP API. A
refused file prints its report (row, column, code, message) and exits with
status 1; nothing is loaded.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from salus.cliutil import command_errors, console, progress, settings_from

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["datasets", "submit"]


def _services(ctx: click.Context) -> Services:
    from salus.services import Services

    return Services.build(settings_from(ctx))


@click.command()
@click.argument("dataset")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--org", "org", required=True, help="The submitting hospital's organization id.")
@click.option("--period", help="The month (YYYY-MM) every row must be for.")
@click.pass_context
def submit(ctx: click.Context, dataset: str, file: Path, org: str, period: str | None) -> None:
    """Validate FILE (CSV or JSON) against DATASET's schema and load it for ORG."""
    from rich.table import Table

    from salus.security.principal import AuthMethod, Principal, PrincipalKind
    from salus.warehouse.datasets.definitions import schema_named
    from salus.warehouse.datasets.service import Datasets, SubmissionRejected

    with command_errors():
        schema_named(dataset)
        data = file.read_bytes()
        media = "json" if file.suffix.lower() == ".json" else "auto"
        services = _services(ctx)
        principal = Principal(
            kind=PrincipalKind.SYSTEM,
            id=f"cli:{getpass.getuser()}"[:100],
            org_id=org,
            auth_method=AuthMethod.LOCAL,
        )
        try:
            with progress() as bar:
                task = bar.add_task(f"{dataset}: loading", total=None)

                def step(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                try:
                    summary = Datasets(services).submit(
                        principal, dataset, data, media=media, period=period, progress=step
                    )
                except SubmissionRejected as exc:
                    bar.stop()
                    table = Table("row", "column", "code", "message", title=exc.message)
                    for issue in exc.report.issues:
                        table.add_row(str(issue.row), issue.column or "", issue.code, issue.message)
                    console.print(table)
                    ctx.exit(1)
                    return
        finally:
            services.close()
        console.print(
            f"accepted {summary.dataset} {summary.period} for {summary.org_id}: "
            f"{summary.rows} rows ({summary.mode}, {summary.replaced} replaced), "
            f"{summary.resources} FHIR resources, submission {summary.id}"
        )


@click.group()
def datasets() -> None:
    """Operational dataset schemas, templates and submission history."""


@datasets.command("list")
def list_() -> None:
    """List the dataset schemas."""
    from salus.warehouse.datasets.definitions import SCHEMAS

    for schema in SCHEMAS.values():
        console.print(
            f"{schema.name}\t{schema.version}\t{schema.mode}\t"
            f"key={','.join(schema.key)}\t{schema.title}"
        )


@datasets.command("template")
@click.argument("name")
def template(name: str) -> None:
    """Print NAME's CSV template (the header line)."""
    from salus.warehouse.datasets.definitions import schema_named

    with command_errors():
        click.echo(schema_named(name).template_csv(), nl=False)


@datasets.command("schema")
@click.argument("name")
def schema(name: str) -> None:
    """Print NAME's JSON Schema."""
    from salus.warehouse.datasets.definitions import schema_named

    with command_errors():
        click.echo(json.dumps(schema_named(name).json_schema(), indent=2, ensure_ascii=False))


@datasets.command("history")
@click.argument("name", required=False)
@click.pass_context
def history(ctx: click.Context, name: str | None) -> None:
    """List accepted submissions (all organizations), newest first."""
    from salus.security.principal import AuthMethod, Principal, PrincipalKind
    from salus.warehouse.datasets.service import Datasets

    with command_errors():
        services = _services(ctx)
        principal = Principal(
            kind=PrincipalKind.SYSTEM,
            id=f"cli:{getpass.getuser()}"[:100],
            org_id="*",
            auth_method=AuthMethod.LOCAL,
        )
        try:
            for s in Datasets(services).history(principal, name):
                console.print(
                    f"{s.submitted_at.isoformat(timespec='seconds')}\t{s.dataset}\t{s.org_id}\t"
                    f"{s.period}\t{s.rows} rows\t{s.id}"
                )
        finally:
            services.close()
