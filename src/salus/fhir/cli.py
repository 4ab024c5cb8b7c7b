"""``salus fhir import|reindex``."""

from __future__ import annotations

from pathlib import Path

import click

from salus.audit.events import AuditEvent
from salus.cliutil import command_errors, console, progress, settings_from
from salus.security.principal import AuthMethod, Principal, PrincipalKind

__all__ = ["fhir"]


@click.group()
def fhir() -> None:
    """FHIR bulk loading and index maintenance."""


def _operator(org_id: str) -> Principal:
    import getpass

    return Principal(
        kind=PrincipalKind.SYSTEM,
        id=f"cli:{getpass.getuser()}"[:100],
        org_id=org_id,
        auth_method=AuthMethod.LOCAL,
    )


@fhir.command("import")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--org", "org_id", required=True, help="The organization that owns the records.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--skip-invalid", is_flag=True, help="Report invalid lines and go on.")
@click.pass_context
def import_cmd(
    ctx: click.Context, files: tuple[Path, ...], org_id: str, batch_size: int, skip_invalid: bool
) -> None:
    """Load NDJSON files (.ndjson or .ndjson.gz), validated and indexed, in batches."""
    from salus.fhir.bulkload import import_ndjson
    from salus.services import Services

    with command_errors():
        services = Services.build(settings_from(ctx))
        try:
            if services.org_kinds.kind(org_id) is None:
                raise click.UsageError(f"no organization {org_id}")
            principal = _operator(org_id)
            with progress() as bar:
                task = bar.add_task("Importing", total=None)
                report = import_ndjson(
                    services.db,
                    services.fhir_store,
                    principal,
                    list(files),
                    batch_size=batch_size,
                    skip_invalid=skip_invalid,
                    progress=lambda n: bar.advance(task, n),
                )
            services.db.analyze()  # the planner's statistics after a bulk change
            services.audit.record(
                [
                    AuditEvent.for_principal(
                        principal,
                        category="system",
                        action="C",
                        entity="FHIR import",
                        description=f"imported {report.created} new, {report.updated} updated",
                        detail={"files": len(files), "rejected": len(report.rejected)},
                    )
                ]
            )
            console.print(
                f"{report.created} created, {report.updated} updated, "
                f"{len(report.rejected)} rejected"
            )
            for name, line, reason in report.rejected[:50]:
                console.print(f"  {name}:{line}: {reason}", highlight=False)
        finally:
            services.close()


@fhir.command("reindex")
@click.option("--type", "res_type", help="Only this resource type.")
@click.pass_context
def reindex_cmd(ctx: click.Context, res_type: str | None) -> None:
    """Rebuild the search index (after a change of search parameter definitions)."""
    from salus.fhir.bulkload import reindex
    from salus.services import Services

    with command_errors():
        services = Services.build(settings_from(ctx))
        try:
            with progress() as bar:
                task = bar.add_task("Re-indexing", total=None)
                done = reindex(
                    services.db,
                    services.fhir_store,
                    res_type=res_type,
                    progress=lambda n: bar.advance(task, n),
                )
            services.db.analyze()
            services.audit.record(
                [
                    AuditEvent.for_principal(
                        _operator("-"),
                        category="system",
                        action="U",
                        entity="FHIR index",
                        description=f"re-indexed {done} resources",
                    )
                ]
            )
            console.print(f"{done} resources re-indexed")
        finally:
            services.close()
