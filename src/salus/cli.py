"""The ``salus`` command line.

Every command builds the one :class:`~salus.config.Settings` object from
``--config``, the environment and its own options, then passes it down.
Errors of the :class:`~salus.errors.SalusError` tree are printed as one line
and exit with status 2; they never carry patient data.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from salus import __version__
from salus.cliutil import command_errors, console, progress, settings_from
from salus.errors import SalusError

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

_settings = settings_from
_errors = command_errors
_progress = progress


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file (default: $SALUS_CONFIG).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data folder (default: $SALUS_DATA_DIR or ./salus-data).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None) -> None:
    """Salus: a secure health data hub for networks of hospitals."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["overrides"] = {"data_dir": data_dir} if data_dir else {}


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"salus {__version__}")


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the data folder, the master key file (mode 0600) and the schema.

    Safe to run again: an existing key file is kept, never overwritten.
    """
    from salus.db import create_database, migrate
    from salus.storage.keys import FileKeyProvider

    with _errors():
        settings = _settings(ctx)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if settings.encryption_enabled:
            key_path = settings.key_path()
            if key_path.exists():
                FileKeyProvider(key_path)  # validates it
                console.print(f"Key file: {key_path} (kept)")
            else:
                provider = FileKeyProvider.create(key_path)
                console.print(
                    f"Key file: {key_path} (created, master key {provider.active_key_id()})"
                )
                console.print(
                    "[yellow]Back this file up apart from the data: without it the data "
                    "cannot be read.[/yellow]"
                )
        else:
            console.print("[yellow]Encryption at rest is disabled (development only).[/yellow]")
        if settings.blob_backend == "filesystem":
            settings.blob_path().mkdir(parents=True, exist_ok=True, mode=0o700)
        db = create_database(settings.database_url_value())
        try:
            revision = migrate(db)
        finally:
            db.dispose()
        console.print(f"Database: {db.dialect}, schema at revision {revision}")
        console.print(f"Data folder ready: {settings.data_dir.resolve()}")


@main.command("migrate")
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Upgrade the database schema to the latest revision."""
    from salus.db import create_database, current_revision, migrate

    with _errors():
        settings = _settings(ctx)
        db = create_database(settings.database_url_value())
        try:
            before = current_revision(db)
            after = migrate(db)
        finally:
            db.dispose()
        console.print(f"Schema: {before or '(empty)'} -> {after}")


@main.command()
@click.option("--host", help="Address to listen on (default: $SALUS_HTTP_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="HTTP port (default: $SALUS_HTTP_PORT or 8080).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the server: HTTP APIs, job workers and protocol listeners."""
    from salus.server.run import run_server

    with _errors():
        settings = _settings(ctx, http_host=host, http_port=port)
        settings.check_safe()
        status = run_server(settings)
    if status:
        sys.exit(status)


@main.group()
def keys() -> None:
    """Master keys for encryption at rest."""


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List master key ids and which one is active."""
    from salus.services import build_key_provider

    with _errors():
        provider = build_key_provider(_settings(ctx))
        if provider is None:
            console.print("Encryption at rest is disabled.")
            return
        active = provider.active_key_id()
        for key_id in provider.key_ids():
            console.print(f"{key_id}{'  (active)' if key_id == active else ''}")


@keys.command("rotate")
@click.option("--no-rewrap", is_flag=True, help="Only add the new key; re-wrap later.")
@click.pass_context
def keys_rotate(ctx: click.Context, no_rewrap: bool) -> None:
    """Add a new master key and re-wrap every data key under it (online).

    Data sealed under older keys stays readable throughout; running servers
    pick up the new key within a second. Running it again with
    ``--rewrap-only`` semantics is safe: already re-wrapped items are skipped.
    """
    from salus.services import Services
    from salus.storage.keys import FileKeyProvider

    with _errors():
        settings = _settings(ctx)
        services = Services.build(settings)
        try:
            if not isinstance(services.keys, FileKeyProvider):
                raise SalusError("Encryption at rest is disabled; there is no key to rotate.")
            new_id = services.keys.rotate()
            console.print(f"New active master key: {new_id}")
            if no_rewrap:
                return
            _rewrap_all(services)
        finally:
            services.close()


def _audit_signing_key(services: Services, verb: str, kid: str) -> None:
    """Record a change of the token signing keys in the audit trail."""
    from salus.audit.events import AuditEvent
    from salus.security.cli import system_principal

    event = AuditEvent.for_principal(
        system_principal(),
        category="admin",
        action="E",
        entity="SigningKey",
        description=f"token signing key {verb}: {kid}",
    )
    services.audit.record([event])


@keys.command("rotate-signing")
@click.pass_context
def keys_rotate_signing(ctx: click.Context) -> None:
    """Sign new access tokens (and audit checkpoints) with a new key.

    The previous key stays published in the JWKS so that tokens it signed keep
    working until they expire; retire it afterwards with ``retire-signing``.
    """
    from salus.services import Services

    with _errors():
        services = Services.build(_settings(ctx))
        try:
            kid = services.signing_keys.rotate()
            _audit_signing_key(services, "rotated", kid)
            console.print(f"New signing key: {kid}")
        finally:
            services.close()


@keys.command("retire-signing")
@click.argument("kid")
@click.pass_context
def keys_retire_signing(ctx: click.Context, kid: str) -> None:
    """Stop trusting an old signing key (its tokens stop verifying at once).

    A key id that begins with "-" goes after "--": salus keys retire-signing -- KID"""
    from salus.services import Services

    with _errors():
        services = Services.build(_settings(ctx))
        try:
            services.signing_keys.retire(kid)
            _audit_signing_key(services, "retired", kid)
            console.print(f"Signing key retired: {kid}")
        finally:
            services.close()


@keys.command("rewrap")
@click.pass_context
def keys_rewrap(ctx: click.Context) -> None:
    """Re-wrap data keys still under an older master key (resumable)."""
    from salus.services import Services

    with _errors():
        services = Services.build(_settings(ctx))
        try:
            _rewrap_all(services)
        finally:
            services.close()


def _rewrap_all(services: Any) -> None:
    with _progress() as progress:
        for rewrapper in services.rewrappers:
            task = progress.add_task(f"Re-wrapping {rewrapper.name}", total=None)
            report = rewrapper.rewrap(lambda n, t=task: progress.advance(t, n))
            progress.update(task, total=report.scanned, completed=report.scanned)
            console.print(
                f"{rewrapper.name}: {report.rewrapped} re-wrapped of {report.scanned} scanned"
            )


@main.group()
def jobs() -> None:
    """Inspect and retry background jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "done", "dead"]))
@click.option("--kind", help="Only jobs of this kind.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def jobs_list(
    ctx: click.Context, status: str | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first, with a count per status."""
    from salus.jobs import JobStatus

    with _errors(), _queue(ctx) as queue:
        items = queue.list(JobStatus(status) if status else None, kind, limit)
        counts = queue.counts()
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "counts": counts,
                        "jobs": [_job_dict(job) for job in items],
                    },
                    indent=2,
                )
            )
            return
        table = Table("id", "kind", "status", "attempts", "run at", "last error")
        for job in items:
            table.add_row(
                str(job.id),
                job.kind,
                job.status.value,
                f"{job.attempts}/{job.max_attempts}",
                job.run_at.isoformat(timespec="seconds"),
                job.last_error or "",
            )
        console.print(table)
        console.print("  ".join(f"{k}: {v}" for k, v in counts.items()))


@jobs.command("show")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: int) -> None:
    """Show one job as JSON."""
    with _errors(), _queue(ctx) as queue:
        click.echo(json.dumps(_job_dict(queue.get(job_id)), indent=2))


@jobs.command("retry")
@click.argument("job_id", type=int, required=False)
@click.option("--all-dead", is_flag=True, help="Retry every dead job.")
@click.option("--kind", help="With --all-dead: only jobs of this kind.")
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: int | None, all_dead: bool, kind: str | None) -> None:
    """Put a dead job (or all of them) back in the queue."""
    with _errors(), _queue(ctx) as queue:
        if all_dead:
            console.print(f"{queue.retry_dead(kind)} job(s) queued again")
        elif job_id is not None:
            if not queue.retry(job_id):
                raise SalusError(f"Job {job_id} is not dead (only dead jobs can be retried).")
            console.print(f"Job {job_id} queued again")
        else:
            raise click.UsageError("give a JOB_ID or --all-dead")


@contextmanager
def _queue(ctx: click.Context) -> Iterator[Any]:
    from salus.db import create_database, migrate
    from salus.jobs import JobQueue

    settings = _settings(ctx)
    db = create_database(settings.database_url_value())
    try:
        if settings.migrate_on_start:
            migrate(db)
        yield JobQueue(db, max_attempts=settings.jobs_max_attempts)
    finally:
        db.dispose()


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at.isoformat(),
        "last_error": job.last_error,
        "dedup_key": job.dedup_key,
        "tenant": job.tenant,
        "payload": job.payload,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _register_subcommands() -> None:
    from salus.audit.cli import audit
    from salus.demo.cli import demo
    from salus.dicom.cli import dicom
    from salus.fhir.cli import fhir
    from salus.hl7.cli import hl7
    from salus.security.cli import break_glass, client, grant, org, token, user
    from salus.warehouse.cli import warehouse
    from salus.warehouse.datasets.cli import datasets, submit

    for command in (
        audit,
        org,
        user,
        client,
        grant,
        token,
        break_glass,
        fhir,
        dicom,
        hl7,
        warehouse,
        datasets,
        submit,
        demo,
    ):
        main.add_command(command)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
