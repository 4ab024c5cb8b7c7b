"""``salus audit``: verify the audit trail and report who accessed a patient.

``salus audit verify`` exits 0 when the chain, its head and its checkpoints
are intact and 1 naming the first broken link; ``salus audit report``
lists the accesses to one patient's record. Like the rest of the CLI, a
:class:`~salus.errors.SalusError` is printed as one line and exits with 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from salus.cliutil import command_errors, console, settings_from
from salus.config import Settings

if TYPE_CHECKING:
    from salus.audit.signing import CheckpointSigner
    from salus.db import Database

__all__ = ["audit", "checkpoint_signer"]

_settings = settings_from
_errors = command_errors


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    from salus.db import create_database

    db = create_database(settings.database_url_value())
    try:
        yield db
    finally:
        db.dispose()


def checkpoint_signer(settings: Settings, db: Database) -> CheckpointSigner | None:
    """What verifies checkpoint signatures: Salus's signing keys.

    Verifying needs only their public parts, so no key provider is opened.
    None where the signing keys are not available; ``verify`` then still
    checks every checkpoint's (seq, hash) and the chain's length, and says
    that signatures were not checked.
    """
    try:
        from salus.security.signing import SigningKeys
    except ImportError:  # pragma: no cover - older trees without signing keys
        return None
    return SigningKeys(db, None, cache_seconds=3600.0)


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-01-31 or 2026-01-31T08:00:00Z") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@click.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.pass_context
def verify_cmd(ctx: click.Context, as_json: bool, batch_size: int) -> None:
    """Check the hash chain, its head and the signed checkpoints.

    Exits 0 when intact, 1 naming the first broken link.
    """
    from salus.audit.verify import verify_chain

    with _errors():
        settings = _settings(ctx)
        with _database(settings) as db:
            report = verify_chain(
                db,
                signer=checkpoint_signer(settings, db),
                checkpoint_file=settings.audit_checkpoint_path(),
                batch_size=batch_size,
            )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        console.print(
            f"Audit trail intact: {report.events_checked} events checked "
            f"(head at {report.last_seq}), {report.checkpoints_checked} checkpoint(s) in the "
            f"database, {report.file_checkpoints_checked} in the checkpoint file",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"[red]AUDIT TRAIL BROKEN:[/red] {report.message}", highlight=False, soft_wrap=True
        )
        if len(report.problems) > 1:
            console.print(
                f"{len(report.problems) - 1} further problem(s):", highlight=False, soft_wrap=True
            )
            for problem in report.problems[1:21]:
                console.print(f"  - {problem.message}", highlight=False, soft_wrap=True)
    if not as_json:
        for note in report.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        if not report.signatures_checked:
            console.print(
                "signatures: not checked (no signer configured)", highlight=False, soft_wrap=True
            )
    ctx.exit(0 if report.ok else 1)


@audit.command("report")
@click.option("--patient", "patient_key", required=True, help="The patient key.")
@click.option("--since", help="Only events at or after this time (ISO 8601; UTC if no zone).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def report_cmd(
    ctx: click.Context, patient_key: str, since: str | None, limit: int, as_json: bool
) -> None:
    """Who accessed a patient's record, when and why (newest first)."""
    from salus.audit.fhir import patient_access_report

    since_at = _parse_since(since)
    with _errors():
        settings = _settings(ctx)
        with _database(settings) as db:
            entries = patient_access_report(db, patient_key, since_at, limit=limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    out = Console()  # made now: it takes the terminal width (COLUMNS) of this run
    table = Table("time", "who", "org", "purpose", "action", "outcome", "what", "flags")
    for entry in entries:
        flags: list[str] = list(entry["flags"])
        if entry["break_glass"] and "break-glass" not in flags:
            flags.append("break-glass")
        table.add_row(
            entry["time"],
            entry["principal"] or "(unauthenticated)",
            entry["org_id"] or "",
            entry["purpose"] or "",
            entry["action"],
            _outcome_text(entry["outcome"]),
            entry["entity"] or "",
            ",".join(flags),
        )
    out.print(table)
    out.print(f"{len(entries)} event(s)", highlight=False, soft_wrap=True)


def _outcome_text(outcome: Any) -> str:
    return {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}.get(
        int(outcome), str(outcome)
    )
