"""``salus hl7 list|show|replay|import|send``: the message store from the server host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from salus.cliutil import command_errors, console, settings_from

if TYPE_CHECKING:
    from salus.hl7.runtime import Hl7Runtime
    from salus.services import Services

__all__ = ["hl7"]


@click.group()
def hl7() -> None:
    """HL7 v2 message store: inspect, replay, import files, send."""


def _open(ctx: click.Context) -> tuple[Services, Hl7Runtime]:
    from salus.services import Services

    services = Services.build(settings_from(ctx))
    assert services.hl7 is not None  # noqa: S101 - installed by Services.build
    return services, services.hl7


def _audit(services: Services, description: str, entity: str, action: str = "R") -> None:
    import getpass

    from salus.audit.events import AuditEvent
    from salus.security.principal import AuthMethod, Principal, PrincipalKind

    principal = Principal(
        kind=PrincipalKind.SYSTEM,
        id=f"cli:{getpass.getuser()}"[:100],
        org_id="*",
        auth_method=AuthMethod.LOCAL,
    )
    services.audit.record(
        [
            AuditEvent.for_principal(
                principal, category="hl7", action=action, entity=entity, description=description
            )
        ]
    )


def _row_id(runtime: Hl7Runtime, ident: str) -> int:
    if ident.isdigit():
        return int(runtime.store.get(int(ident))["id"])
    return int(runtime.store.by_uid(ident)["id"])


@hl7.command("list")
@click.option("--state", help="received, applied, failed, rejected or ignored.")
@click.option("--org", "org_id", help="Only this sending organization.")
@click.option("--type", "message_type", help="Message type, e.g. ADT^A01.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_cmd(
    ctx: click.Context,
    state: str | None,
    org_id: str | None,
    message_type: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Stored messages, newest first."""
    from salus.hl7.routes import summary

    with command_errors():
        services, runtime = _open(ctx)
        try:
            rows = runtime.store.list(
                org_id=org_id, state=state, message_type=message_type, limit=limit
            )
            _audit(services, "list", "HL7 messages")
            for row in rows:
                if as_json:
                    click.echo(json.dumps(summary(row)))
                else:
                    console.print(
                        f"{row['id']:>8}  {row['received_at']:%Y-%m-%d %H:%M:%S}  "
                        f"{row['state']:<8} {row['ack_code'] or '':<2}  "
                        f"{row['org_id'] or '-':<10} {row['message_type'] or '-':<8} "
                        f"{row['control_id'] or '-'}  {row['error'] or ''}",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,  # one line per message, whatever the terminal
                    )
        finally:
            services.close()


@hl7.command("show")
@click.argument("ident")
@click.option("--body", is_flag=True, help="Also print the raw message (patient data).")
@click.pass_context
def show_cmd(ctx: click.Context, ident: str, body: bool) -> None:
    """One message (by id or uid): metadata, outcome and optionally the raw text."""
    from salus.hl7.routes import summary

    with command_errors():
        services, runtime = _open(ctx)
        try:
            row = runtime.store.get(_row_id(runtime, ident))
            _audit(services, "read", f"HL7Message/{row['uid']}")
            click.echo(json.dumps(summary(row), indent=2))
            if body:
                click.echo(runtime.store.body(row).decode("utf-8", "replace").replace("\r", "\n"))
        finally:
            services.close()


@hl7.command("replay")
@click.argument("idents", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every failed message.")
@click.option("--org", "org_id", help="With --failed: only this organization.")
@click.pass_context
def replay_cmd(
    ctx: click.Context, idents: tuple[str, ...], all_failed: bool, org_id: str | None
) -> None:
    """Apply failed (or rejected) messages again, after a mapping or profile fix."""
    if not idents and not all_failed:
        raise click.UsageError("name messages or use --failed")
    with command_errors():
        services, runtime = _open(ctx)
        try:
            ids = [_row_id(runtime, i) for i in idents]
            if all_failed:
                rows = runtime.store.list(org_id=org_id, state="failed", limit=100_000)
                ids += sorted(int(r["id"]) for r in rows)
            counts: dict[str, int] = {}
            for message_id in ids:
                ack = runtime.service.replay(message_id)
                counts[ack.code] = counts.get(ack.code, 0) + 1
                _audit(services, "replay", f"HL7Message/{message_id}", action="U")
                if ack.code != "AA":
                    console.print(f"{message_id}: {ack.code} {ack.text or ''}", markup=False)
            console.print(f"replayed {len(ids)}: {counts}")
        finally:
            services.close()


@hl7.command("import")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--client", "client_id", help="Act as this client (default: the facility's profile).")
@click.pass_context
def import_cmd(ctx: click.Context, files: tuple[Path, ...], client_id: str | None) -> None:
    """Store and apply HL7 files (one message, or FHS/BHS batches; CR, LF or CRLF; BOM)."""
    from salus.hl7.parse import split_batch_bytes

    with command_errors():
        services, runtime = _open(ctx)
        try:
            connection = services.directory.client_principal(client_id) if client_id else None
            counts: dict[str, int] = {}
            for path in files:
                batch = split_batch_bytes(path.read_bytes())
                for raw in batch.raw_messages:
                    received = runtime.service.receive(raw, source="file", connection=connection)
                    counts[received.ack.code] = counts.get(received.ack.code, 0) + 1
            runtime.apply_pending()
            _audit(services, f"import of {len(files)} file(s)", "HL7 import", action="C")
            console.print(f"imported: {counts}")
        finally:
            services.close()


@hl7.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--destination", required=True, help="A destination of the HL7 profiles file.")
@click.pass_context
def send_cmd(ctx: click.Context, file: Path, destination: str) -> None:
    """Queue one message for an outbound destination (sent by the job workers)."""
    from salus.hl7.parse import split_segments

    with command_errors():
        services, runtime = _open(ctx)
        try:
            text = "\r".join(split_segments(file.read_bytes().decode("utf-8"))) + "\r"
            job_id = runtime.send(destination, text.encode())
            _audit(services, f"queued for {destination}", f"Job/{job_id}", action="C")
            console.print(f"queued as job {job_id}")
        finally:
            services.close()
